"""qzhou-jax: QZhou-Embedding's recipe in JAX. Importing the package chooses the CPU backend on a machine with no
accelerator (see `backend.py`), before any module imports JAX."""
from qzhou_jax import backend as _backend

_backend.cpu_without_accelerator()
