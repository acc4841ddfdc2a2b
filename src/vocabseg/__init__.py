"""vocabseg: open-vocabulary semantic segmentation (SAN, FC-CLIP, SegCLIP and
training-free CLIP methods) on one core.

    import vocabseg
    seg = vocabseg.load("san-vit-b16")
    result = seg("photo.jpg", "road; car, truck; person; tree")
    result.save("outputs/photo")
"""
from .vocab import Vocabulary, VocabularyError

__version__ = "0.1.0"
__all__ = ["Vocabulary", "VocabularyError", "load", "Segmenter"]


def __getattr__(name):  # keep `import vocabseg` light: torch models load on first use
    if name in ("load", "Segmenter"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
