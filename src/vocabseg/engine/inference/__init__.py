"""Inference: one image (``image``), several at once (``batched``), test-time
augmentation (``tta``). Full-size scores are lazy (``ScoreMap``) and reduced to
labels a band of rows at a time (``semantic``)."""
from .image import (ImageFeatures, MeanMap, ScoreMap, encode, finish_windows, full_scores, infer, instances,
                    panoptic, score_map, scores, select, semantic)

__all__ = ["ImageFeatures", "MeanMap", "ScoreMap", "encode", "finish_windows", "full_scores", "infer", "instances",
           "panoptic", "score_map", "scores", "select", "semantic"]
