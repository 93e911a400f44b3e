# Everything else is in pyproject.toml; setuptools reads cffi_modules only from here.
from setuptools import setup

setup(cffi_modules=["native/build_kmeans.py:ffibuilder"])
