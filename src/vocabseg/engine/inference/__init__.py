"""Inference: one image (``image``), several at once (``batched``), test-time
augmentation (``tta``)."""
from .image import ImageFeatures, encode, finish_windows, infer, instances, panoptic, scores, select

__all__ = ["ImageFeatures", "encode", "finish_windows", "infer", "instances", "panoptic", "scores", "select"]
