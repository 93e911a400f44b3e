"""Weights as numbers: 1D k-means (the C core), codebooks, compensated rounding, low-rank
pairs, and a choice (recipe.py) made into an encoding. Knows weights (io.select), never graphs."""
