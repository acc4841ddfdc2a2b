"""Datasets: benchmark registry and readers (``get_dataset``; your own data as ``folder:PATH`` or
``coco:FILE.json``, see ``vocabseg.data.sources``), training transforms
(``vocabseg.data.transforms``), synthetic datasets in the real layouts
(``vocabseg.data.synthetic``) and prepare-from-raw converters (``vocabseg.data.prepare``)."""
from .benchmarks import BENCHMARKS, Benchmark, datasets_root, get_benchmark
from .readers import get_dataset

__all__ = ["BENCHMARKS", "Benchmark", "datasets_root", "get_benchmark", "get_dataset"]
