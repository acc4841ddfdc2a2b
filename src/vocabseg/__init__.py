"""vocabseg: open-vocabulary semantic segmentation (SAN, FC-CLIP, SegCLIP and
training-free CLIP methods) on one core.

    import vocabseg
    seg = vocabseg.load("san-vit-b16")
    result = seg("photo.jpg", "road; car, truck; person; tree")
    result.save("outputs", "photo")

``vocabseg.load_model`` returns the bare ``torch.nn.Module``; submodules
(``vocabseg.checkpoint``, ``vocabseg.data``, ...) import on first access.
"""
import importlib

from .vocab import Vocabulary, VocabularyError

__version__ = "0.1.0"
__all__ = ["Vocabulary", "VocabularyError", "load", "load_model", "Segmenter"]

_API = ("load", "load_model", "Segmenter")
_SUBMODULES = ("api", "checkpoint", "data", "engine", "errors", "methods", "protocol", "registry", "results",
               "testing", "text", "vocab")


def __getattr__(name):  # keep `import vocabseg` light: torch models load on first use
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vocabseg' has no attribute {name!r}")
