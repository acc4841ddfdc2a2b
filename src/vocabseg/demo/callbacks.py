"""The demo's work, free of any web framework (``app.py`` wires it to Gradio).

``segment`` reads an upload within the demo's limits (larger images are
downscaled; only those too large to decode safely are refused), segments it with the one cached model and returns
an ``Outcome``: a status line, the overlay, the label map, the panoptic view
when the model does panoptic segmentation, the legend and the files to
download, all written under the app's temporary folder. A user's mistake (no
image, a corrupt file, an empty vocabulary) comes back as a message, never as
an exception, so the app keeps serving.

Every field of a request is untrusted (a plain HTTP client can send anything):
the model must be one of the offered names, the image a file inside the upload
folder, the vocabulary text of bounded length; replies never name a server path.
"""
from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import render
from ..errors import ImageError, UserError
from ..images import pil_to_rgb
from ..limits import fit_pixels    # the pixel check shared with the command line and the API
from ..results import PanopticResult, SemanticResult
from ..text import TEMPLATE_SETS
from ..vocab import Vocabulary, VocabularyError

USER_ERRORS = (UserError, FileNotFoundError)
MODEL_REFUSED = "this server does not offer that model: choose one from the Model list"
NO_IMAGE = "no image: upload one or pick an example"
DEFAULT_TEMPLATES = "model default"
TEMPLATE_CHOICES = (DEFAULT_TEMPLATES,) + TEMPLATE_SETS
LEGEND_ALL_CLASSES = 30      # longer vocabularies list only the classes present
KEEP_RESULTS = 32            # result folders kept on disk (older ones are removed)
TEXT_MEMORY = 64             # vocabularies kept encoded in memory per template set


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a public demo."""
    max_pixels: int = 1024 * 1024     # larger images are downscaled to this many pixels
    max_upload_mb: float = 10.0       # larger files are refused
    max_classes: int = 1000           # ADE-847 fits
    max_vocab_chars: int = 100_000    # longer vocabulary text is refused before it is parsed
    max_decode_pixels: int = 40_000_000   # larger images (after JPEG's reduced decoding) are refused


class ModelCache:
    """At most one ``Segmenter`` per process: loaded on first use and kept; asking
    for another model releases the current one before loading the new one.
    ``offered``: the names a request may ask for, or {name: what ``factory`` loads}
    (a zoo name or a checkpoint folder); ``factory(target) -> Segmenter``."""

    def __init__(self, factory: Callable, offered: Mapping[str, str] | Sequence[str]):
        self.factory = factory
        self.offered = dict(offered) if isinstance(offered, Mapping) else {m: m for m in offered}
        self.name: str | None = None
        self.segmenter = None
        self.tasks: dict[str, tuple[str, ...]] = {}    # offered name -> tasks, once loaded
        self._lock = threading.Lock()

    def check(self, name) -> None:
        """Refuse anything but an offered name, with one message that repeats nothing of the request."""
        if not isinstance(name, str) or name not in self.offered:
            raise UserError(MODEL_REFUSED)

    def get(self, name):
        """The segmenter of offered model ``name`` (``check``). A model that fails to
        load is reported without its error, which may name server paths: that goes to the log."""
        try:
            return self.load(name)
        except USER_ERRORS as e:
            if str(e) == MODEL_REFUSED:
                raise
            print(f"vocabseg demo: cannot load {name}: {e}", file=sys.stderr)
            raise UserError(f"model {name} could not be loaded; the server log says why") from None

    def load(self, name):
        """``get`` with the loader's own errors (for the server's start, not for a request)."""
        self.check(name)
        with self._lock:
            if name != self.name or self.segmenter is None:
                self.segmenter, self.name = None, None
                gc.collect()
                self.segmenter = self.factory(self.offered[name])
                self.name = name
                self.tasks[name] = tuple(self.segmenter.tasks)
            return self.segmenter

    def can(self, name, task: str) -> bool:
        """Whether model ``name`` is known to do ``task`` (False until it has been loaded)."""
        return isinstance(name, str) and task in self.tasks.get(name, ())


@dataclass
class View:
    """What the legend re-renders without running the model again."""
    semantic: SemanticResult
    panoptic: PanopticResult | None = None


@dataclass
class Outcome:
    message: str
    error: bool = False
    overlay: Image.Image | None = None
    labels: Image.Image | None = None
    panoptic: Image.Image | None = None
    legend: list = field(default_factory=list)        # [(text, class name)] for a highlighted-text legend
    colors: dict = field(default_factory=dict)        # class name -> "#rrggbb"
    files: list = field(default_factory=list)         # paths to download
    view: View | None = None


# --- images ----------------------------------------------------------------
def downscale(image: Image.Image, max_pixels: int) -> Image.Image:
    w, h = fit_pixels(image.width, image.height, max_pixels)
    if (w, h) == image.size:
        return image
    return image.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _upload_path(value) -> tuple[str | None, str]:
    """(path, original file name) of what an image input gives: a path or
    Gradio's file payload ``{"path": ..., "orig_name": ...}``."""
    if isinstance(value, dict):
        path = value.get("path")
        return path, value.get("orig_name") or (os.path.basename(path) if path else "image")
    if isinstance(value, (str, os.PathLike)):
        return str(value), os.path.basename(str(value))
    return None, "image"


def _inside(path: str, roots) -> bool:
    real = Path(path).resolve()
    return any(real.is_relative_to(Path(r).resolve()) for r in roots)


def read_upload(value, limits: Limits, roots=None) -> tuple[Image.Image, tuple[int, int], str]:
    """An uploaded image -> (RGB image of at most ``limits.max_pixels`` pixels,
    original (width, height), file name). With ``roots`` (folders) a path outside
    them is treated as no image at all. Raises ``ImageError`` saying what is wrong."""
    if value is None:
        raise ImageError(NO_IMAGE)
    if isinstance(value, (Image.Image, np.ndarray)):
        im = pil_to_rgb(value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value)))
        return downscale(im, limits.max_pixels), im.size, "image"
    path, name = _upload_path(value)
    if not isinstance(path, str) or not isinstance(name, str) or "\0" in path:
        raise ImageError(NO_IMAGE)
    if roots is not None and not _inside(path, roots):
        raise ImageError(NO_IMAGE)      # the same words as a missing file: nothing to probe with
    if not os.path.isfile(path):
        raise ImageError(NO_IMAGE)
    size = os.path.getsize(path)
    if size > limits.max_upload_mb * 1e6:
        raise ImageError(f"{name} is {size / 1e6:.1f} MB; this demo accepts files up to {limits.max_upload_mb:g} MB")
    try:
        with Image.open(path) as im:
            w, h = im.size
            original = (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)   # EXIF turns it
            im.draft("RGB", fit_pixels(*im.size, limits.max_pixels))   # JPEG: decode at a reduced scale
            if im.width * im.height > limits.max_decode_pixels:
                raise ImageError(f"{name} is {w}×{h} pixels; this demo reads images of at most "
                                 f"{limits.max_decode_pixels:,} pixels")
            im.load()
            rgb = pil_to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has too many pixels to decode safely") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot read {name}: not an image file or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).split("\n")[0] or type(e).__name__
        raise ImageError(f"cannot read {name}: {reason}") from None
    return downscale(rgb, limits.max_pixels), original, name


# --- vocabularies --------------------------------------------------------------
def benchmark_vocabularies() -> list[str]:
    """The benchmark class lists shipped with vocabseg: ``ade150``, ``ade150:fcclip``, ..."""
    root = resources.files("vocabseg") / "data" / "vocab"
    names = sorted(f.name[:-4] for f in root.iterdir() if f.name.endswith(".txt"))
    return [n.replace(".", ":", 1) for n in names]


def benchmark_text(name: str) -> str:
    """The vocabulary string of a benchmark's class list (for the text box)."""
    return Vocabulary.from_dataset(name).to_string() if name else ""


def parse_vocabulary(text: str | None, max_classes: int, max_chars: int = Limits.max_vocab_chars) -> Vocabulary:
    """Only the typed text is read (never a file or a benchmark name: this is a public page)."""
    if text is not None and not isinstance(text, str):
        raise VocabularyError("the vocabulary must be text: class names separated by ';'")
    if text and len(text) > max_chars:
        raise VocabularyError(f"the vocabulary is {len(text)} characters long; this demo accepts at most {max_chars}")
    if not text or not text.strip(" ;,\n\t"):
        raise VocabularyError("the vocabulary is empty: type class names separated by ';' "
                              "(synonyms of one class separated by ',')")
    vocab = Vocabulary.parse(text)
    if len(vocab) > max_classes:
        raise VocabularyError(f"the vocabulary has {len(vocab)} classes; this demo accepts at most {max_classes}")
    return vocab


# --- results -----------------------------------------------------------------
def hex_colors(vocab: Vocabulary) -> dict[str, str]:
    return {n: "#%02x%02x%02x" % tuple(int(v) for v in c) for n, c in zip(vocab.names, render.palette(len(vocab)))}


def legend_entries(result: SemanticResult) -> list[tuple[str, str]]:
    """(text, class name) per class, largest share first; classes absent from the
    image follow at 0 % unless the vocabulary is long."""
    present = result.summary()["classes"]
    entries = [(f"{c['name']} {100 * c['share']:.1f}%", c["name"]) for c in present]
    if len(result.vocabulary) <= LEGEND_ALL_CLASSES:
        seen = {c["id"] for c in present}
        entries += [(f"{n} 0%", n) for i, n in enumerate(result.vocabulary.names) if i not in seen]
    return entries


def highlight(view: View | None, name: str | None) -> tuple[Image.Image | None, Image.Image | None]:
    """Overlays (semantic, panoptic) with only class ``name`` shown; all classes when None.
    The page shows them without the drawn legend: scaled to the page, a legend panel
    beside the image was unreadable and hidden under the image's buttons, and the
    page's own legend (``legend_entries``) lists the same classes and shares."""
    if view is None:
        return None, None
    names = view.semantic.vocabulary.names
    cid = names.index(name) if name in names else None
    pan = view.panoptic.overlay(legend=False, highlight=cid) if view.panoptic is not None else None
    return view.semantic.overlay(legend=False, highlight=cid), pan


def safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem).strip("_")[:40]
    return stem or "image"


def new_result_dir(root: Path, keep: int = KEEP_RESULTS) -> Path:
    """A fresh folder under ``root`` for one request's files; the oldest beyond ``keep`` are removed."""
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for p in old[:max(0, len(old) - keep + 1)]:
        shutil.rmtree(p, ignore_errors=True)
    out = root / uuid.uuid4().hex[:12]
    out.mkdir()
    return out


def _memory_only_text(segmenter, templates) -> None:
    """Encode vocabularies in memory only (a public page must not fill the disk
    cache) and keep that memory bounded."""
    encoder = segmenter.model.text_encoder(templates if templates is not None else segmenter.templates)
    encoder.cache = False
    encoder.memory_size = TEXT_MEMORY


def segment(cache: ModelCache, model: str, image, vocabulary: str | None, templates: str | None,
            limits: Limits, out_root: str | os.PathLike, upload_roots=None) -> Outcome:
    """One request: image + vocabulary -> Outcome (errors as a message). With
    ``upload_roots`` the image must be a file inside one of those folders."""
    try:
        cache.check(model)      # first: a refused model reads nothing else
        vocab = parse_vocabulary(vocabulary, limits.max_classes, limits.max_vocab_chars)
        rgb, original, name = read_upload(image, limits, upload_roots)
        tmpl = None if templates in (None, "", DEFAULT_TEMPLATES) else templates
        if tmpl is not None and (not isinstance(tmpl, str) or tmpl not in TEMPLATE_SETS):
            shown = f" {tmpl[:40]!r}" if isinstance(tmpl, str) else ""
            raise UserError(f"unknown template set{shown}; use one of {', '.join(TEMPLATE_SETS)}")
        seg = cache.get(model)
        _memory_only_text(seg, tmpl)
        start = time.perf_counter()
        seg.set_image(np.asarray(rgb))
        sem = seg.predict(vocab, templates=tmpl)
        pan = seg.predict(vocab, templates=tmpl, task="panoptic") if "panoptic" in seg.tasks else None
        seconds = time.perf_counter() - start
    except USER_ERRORS as e:
        return Outcome(message=str(e), error=True)
    except Exception as e:   # a bug: log it and keep serving
        traceback.print_exc(file=sys.stderr)
        return Outcome(message=f"internal error ({type(e).__name__}); the server log has the details", error=True)
    out = new_result_dir(Path(out_root))
    stem = safe_stem(name)
    files = list(sem.save(out, stem).values())
    if pan is not None:
        files += list(pan.save(out, f"{stem}_panoptic").values())
    size = f"{rgb.width}×{rgb.height}"
    if rgb.size != original:
        size += f" (downscaled from {original[0]}×{original[1]})"
    message = f"{model}: {len(vocab)} classes on {size} in {seconds:.2f} s"
    return Outcome(message=message, overlay=sem.overlay(legend=False), labels=sem.label_image(),
                   panoptic=pan.overlay(legend=False) if pan is not None else None, legend=legend_entries(sem),
                   colors=hex_colors(vocab), files=[str(f) for f in files], view=View(sem, pan))
