# Everything else is in pyproject.toml; setuptools reads cffi_modules only from here.
# cffi builds the extension against Python's stable ABI, so one wheel tagged cp310-abi3 serves
# Python 3.10 and every later version.
from setuptools import setup

setup(cffi_modules=["native/build_kmeans.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp310"}})
