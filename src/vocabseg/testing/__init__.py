"""Synthetic data in the real on-disk formats, for tests, examples and benchmarks:
``write_benchmark(name, root)`` writes a tiny prepared benchmark, ``write_raw(kind, src)``
tiny "official downloads" for ``vocabseg prepare``."""
from .raw import write_raw
from .synthetic import write_benchmark

__all__ = ["write_benchmark", "write_raw"]
