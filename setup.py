# Everything else is in pyproject.toml; setuptools reads cffi_modules only from here.
# cffi builds the extension against Python's stable ABI, so one wheel tagged cp310-abi3 serves
# Python 3.10 and every later version.
# The JupyterLab extension, prebuilt (labextension/build.py), goes where JupyterLab and
# Notebook 7 look for extensions: share/jupyter/labextensions/<name> under the environment.
from pathlib import Path

from setuptools import setup

BUILT = Path("onnxcompress/labextension")
SHARED = "share/jupyter/labextensions/onnxcompress-jupyter"
folders = [BUILT, *sorted(p for p in BUILT.rglob("*") if p.is_dir())]
data_files = [
    (str(Path(SHARED, folder.relative_to(BUILT))), sorted(str(f) for f in folder.iterdir() if f.is_file())) for folder in folders
]
setup(
    cffi_modules=["native/build_kmeans.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    data_files=data_files + [(SHARED, ["labextension/install.json"])],
)
