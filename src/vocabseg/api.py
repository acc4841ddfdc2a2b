"""The Python entry point.

    import vocabseg
    seg = vocabseg.load("san-vit-b16")                  # or a checkpoint folder, or weights=PATH
    result = seg("photo.jpg", "road; car, truck; person; tree")
    result.save("outputs", "photo")                     # labels PNG, overlay PNG, JSON summary
    result = seg.predict("cat; sofa")                   # same image, new vocabulary: milliseconds

A ``Segmenter`` keeps the last image's vocabulary-independent features (like
segment-anything's predictor), so re-asking with another vocabulary reruns only
the final classification.
"""
from __future__ import annotations

import hashlib
import os

import torch

from . import registry, speed
from .engine import inference
from .engine.inference import batched
from .engine.inference.refine import parse_refine, refine_map
from .engine.inference import tta as augmentation
from .engine import precision as precisions
from .errors import UserError
from .images import load_image
from .limits import DEFAULT_MAX_PIXELS, check_image, check_max_pixels
from .results import InstanceResult, PanopticResult, SemanticResult
from .text import TEMPLATE_SETS
from .vocab import Vocabulary

DEFAULT_MODEL = registry.DEFAULT_MODEL
TASKS = ("semantic", "panoptic", "instance")


def load_model(name_or_path: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
               clip_weights: str | None = None, device: str | torch.device = "cpu", runtime: str | None = None):
    """A ``SegModel`` ready for inference (eval mode, on ``device``).

    ``name_or_path``: a zoo name (``vocabseg models`` lists them; default
    ``san-vit-b16``) or a vocabseg checkpoint folder. ``weights``: a published
    checkpoint file as distributed (layout detected) or a vocabseg checkpoint;
    without it a zoo model downloads its published weights on first use.
    ``clip_weights``: an open_clip tag or a local CLIP file for models built
    from CLIP (the training-free family) or that take part of CLIP from it.
    The weight policy is ``registry.build``'s. An export folder (``vocabseg export``) runs
    its image side with ``runtime`` (default ``onnxruntime``; ``torch``: its checkpoint).
    """
    from .export import is_export, load_export
    if name_or_path is not None and weights is None and is_export(name_or_path):
        return load_export(name_or_path, runtime=runtime, device=device)
    if runtime not in (None, "torch"):
        raise UserError(f"runtime {runtime} runs an export folder (vocabseg export); {name_or_path} is not one")
    return registry.build(name_or_path, weights=weights, clip_weights=clip_weights, device=device)


def load(name_or_path: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
         clip_weights: str | None = None, device: str | torch.device = "cpu",
         templates: str | None = None, precision: str = "fp32",
         max_pixels: int | None = DEFAULT_MAX_PIXELS, runtime: str | None = None,
         refine: str | None = None) -> "Segmenter":
    """``Segmenter`` around ``load_model(...)``."""
    check_precision(precision, device)            # before loading; the preset's own gate in Segmenter
    check_max_pixels(max_pixels)
    model = load_model(name_or_path, weights=weights, clip_weights=clip_weights, device=device, runtime=runtime)
    return Segmenter(model, templates=templates, name=model.config.get("preset", str(name_or_path)),
                     precision=precision, max_pixels=max_pixels, refine=refine)


def check_precision(precision: str, device, preset: str | None = None) -> str:
    """The precision run for ``precision`` on ``device`` (``auto``: bf16 where native, else
    fp32); bf16 on a CPU without native bf16, int8 on one without VNNI / AMX, fp16 on a CPU,
    or a precision measured under 99 % argmax agreement (or, on a trained tiny model, over 0.5
    held-out mIoU points below fp32) for ``preset`` (``engine.precision.MEASURED`` /
    ``TRAINED``) is a one-line ``UserError``."""
    return precisions.resolve(precision, device, preset)


class Segmenter:
    """Image(s) + vocabulary -> results, with the last image's features cached.

    ``templates``: prompt template set (``single``, ``vild``, ``imagenet``) or a
    list of strings with ``{}``; default: the model's published set.
    ``precision``: ``fp32`` (default); ``bf16`` on a GPU or a CPU with native bf16
    (``avx512_bf16`` / ``amx_bf16``), ``fp16`` on a GPU, ``auto`` (bf16 where native, else
    fp32); ``int8`` (int8 linear weights) on a CPU with VNNI / AMX. A precision measured under
    99 % argmax agreement with fp32 for the preset, or over 0.5 points of held-out mIoU below
    fp32 (``engine.precision.TRAINED``), is refused. Only the image side runs in
    low precision; the head runs in fp32.
    ``max_pixels``: larger images are refused (``ImageError``, read from the file header
    before decoding); default 40 MP, ``None`` for no limit.
    ``refine``: post-processing of semantic scores, ``pamr`` or ``pamr:ITERS:D1,D2,...``
    (``engine.inference.refine``); not with test-time augmentation.
    """

    def __init__(self, model, templates: str | None = None, name: str = "", precision: str = "fp32",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, refine: str | None = None):
        self.model = speed.use_fast_linears(model.eval())
        self.refine = refine if parse_refine(refine) else None
        self.name = name or model.config.get("preset", type(model).__name__)
        self.precision = check_precision(precision, self.device, model.config.get("preset"))   # auto resolved
        self.max_pixels = check_max_pixels(max_pixels)
        self.templates = templates
        self._image: torch.Tensor | None = None
        self._key: str | None = None
        self._features = None          # of _image, computed on first use (``features``)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    def autocast(self):
        """The context in which ``encode_image`` runs at ``precision`` and returns fp32
        features, so that the vocabulary-dependent head runs in fp32 (nothing for fp32)."""
        return precisions.image_side(self.model, self.precision)

    def set_image(self, image) -> torch.Tensor:
        """Read ``image`` (path, PIL, array, tensor) and compute its features once.
        Returns the uint8 [3, H, W] image."""
        img = self._load(image)
        self.features                  # noqa: B018  (computed now, kept for every vocabulary)
        return img

    def _load(self, image) -> torch.Tensor:
        """Make ``image`` the current one; features of a new image are dropped."""
        check_image(image, check_max_pixels(self.max_pixels))
        img = load_image(image)
        key = hashlib.sha1(img.contiguous().numpy().data).hexdigest() + str(tuple(img.shape))
        if key != self._key:
            self._image, self._key, self._features = img, key, None
        return self._image

    @property
    def features(self):
        """The current image's vocabulary-independent features (``inference.encode``), kept
        for every vocabulary asked of it. Test-time augmentation does not use them."""
        if self._image is None:
            raise UserError("no image: call set_image(image) first, or segmenter(image, vocabulary)")
        if self._features is None:
            with self.autocast():
                self._features = inference.encode(self.model, self._image.to(self.device).float().div_(255.0))
        return self._features

    def text(self, vocabulary: Vocabulary, templates=None) -> torch.Tensor:
        """[S, D] unit synonym embeddings of ``vocabulary`` (cached on disk)."""
        t = templates if templates is not None else self.templates
        if isinstance(t, str) and t not in TEMPLATE_SETS:
            raise UserError(f"unknown template set {t!r}; use one of {', '.join(TEMPLATE_SETS)}")
        encoder = self.model.text_encoder(t)
        if self.precision == "bf16":         # fp16 text stays fp32, as before
            return encoder(vocabulary, precision="bf16").to(self.device)
        return encoder(vocabulary).to(self.device)

    @torch.no_grad()
    def predict(self, vocabulary, templates=None, return_scores: bool = False, task: str = "semantic",
                tta: bool = False):
        """Segment the image of the last ``set_image`` with ``vocabulary`` (a string
        ``"a; b, c"``, a list of names, a file, a benchmark name or a Vocabulary).
        ``tta``: semantic scores averaged over short sides 320..1120 and their flips
        (SAN / MaskFormer test-time augmentation; 12 passes, the image cache is not used)."""
        if self._image is None:
            raise UserError("no image: call set_image(image) first, or segmenter(image, vocabulary)")
        vocab = Vocabulary.resolve(vocabulary)
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        if tta and task != "semantic":
            raise UserError("test-time augmentation applies to semantic segmentation only")
        if tta and self.refine:
            raise UserError(f"refine={self.refine} does not combine with test-time augmentation")
        if task not in self.tasks:
            raise UserError(f"model {self.name} does not do {task} segmentation (it does: {', '.join(self.tasks)})")
        text = self.text(vocab, templates)
        with self.autocast():
            return self._predict(vocab, text, return_scores, task, tta)

    def _predict(self, vocab, text, return_scores, task, tta):
        if task == "panoptic":
            out = inference.panoptic(self.model, self.features, text, vocab)
            return PanopticResult(out["pan_seg"].cpu(), out["segments"], vocab, self._image, self.name)
        if task == "instance":
            out = inference.instances(self.model, self.features, text, vocab)
            return InstanceResult(out["masks"].cpu(), out["labels"].cpu(), out["scores"].cpu(), vocab,
                                  self._image, self.name)
        if tta:
            scores = augmentation.tta_map(self.model, self._image.to(self.device).float().div_(255.0), text, vocab)
        else:
            scores = inference.score_map(self.model, self.features, text, vocab)
            if self.refine:
                scores = refine_map(scores, self._image.to(self.device).float().div_(255.0), self.model.protocol,
                                    self.refine)
        labels, confidence, full = inference.semantic(scores, keep_scores=return_scores)
        return SemanticResult(labels, confidence, vocab, self._image, full, self.name)

    @torch.no_grad()
    def predict_batch(self, images: list, vocabulary, templates=None, return_scores: bool = False,
                      batch_size: int = 4) -> list[SemanticResult]:
        """Semantic results for several images (paths, PIL, arrays, tensors): crops of equal
        padded size go through the model ``batch_size`` at a time (``engine.batched``).
        The last-image feature cache is left untouched."""
        vocab = Vocabulary.resolve(vocabulary)
        limit = check_max_pixels(self.max_pixels)
        for im in images:
            check_image(im, limit)
        imgs = [load_image(im) for im in images]
        text = self.text(vocab, templates)
        results = []
        with self.autocast():
            maps = batched.batch_maps(self.model, [im.to(self.device).float() / 255.0 for im in imgs], text, vocab,
                                      max_crops=batch_size, refine=self.refine)
            for im, scores in zip(imgs, maps):
                labels, confidence, full = inference.semantic(scores, keep_scores=return_scores)
                results.append(SemanticResult(labels, confidence, vocab, im, full, self.name))
        return results

    def __call__(self, image, vocabulary, templates=None, return_scores: bool = False, task: str = "semantic",
                 tta: bool = False):
        if tta:
            self._load(image)          # test-time augmentation encodes its own sizes
        else:
            self.set_image(image)
        return self.predict(vocabulary, templates=templates, return_scores=return_scores, task=task, tta=tta)
