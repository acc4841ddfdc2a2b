"""Prompt templates and the text encoder with its on-disk embedding cache.

Each name is put in every template, encoded by CLIP's text tower; the template
embeddings are L2-normalised, averaged and re-normalised (``average="normalized"``,
SAN / FC-CLIP / CLIP) or averaged raw and then normalised (``average="raw"``,
SegCLIP). Results are cached under ``$VOCABSEG_HOME/text`` keyed by the CLIP
identity (architecture + weights), the template set, the names and the precision
of the text tower (``bf16``: on CPU a bf16 twin of the text tower (``bf16.twin``) under autocast,
elsewhere autocast; the embeddings are stored as fp32).
"""
from __future__ import annotations

import hashlib
import json
import os
import string
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import bf16, speed, text_prefix
from .backbones.clip import text_dim
from .files import atomic_write, vocabseg_home
from .text_prefix import embed_tokens, project_text, standard_text_tower
from .errors import UserError, VocabularyError
from .torchfile import load_torch_file
from .vocab import Vocabulary

SINGLE = ["a photo of a {}."]

VILD = [
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
]


def _imagenet_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def templates(name: str | Sequence[str]) -> list[str]:
    """A template set by name (``single``, ``vild``, ``imagenet``), one template string, or
    any sequence of them; each holds exactly one ``{}`` and no other replacement field
    (``{{`` / ``}}`` for literal braces). Anything else is a ``VocabularyError``."""
    if isinstance(name, str) and name in TEMPLATE_SETS:
        out = list(SINGLE) if name == "single" else list(VILD) if name == "vild" else _imagenet_templates()
    elif isinstance(name, str) and "{" not in name:
        raise VocabularyError(f"unknown template set {name!r}; use single, vild or imagenet, or templates "
                              "holding '{}' where the class name goes")
    else:
        out = [name] if isinstance(name, str) else list(name) if isinstance(name, Iterable) else None
        if not out or not all(isinstance(t, str) for t in out):
            raise VocabularyError(f"templates must be a set name or a non-empty list of strings, got {name!r:.80}")
    for t in out:
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t) if f is not None]
        except ValueError:    # a lone '{' or '}'
            fields = []
        ok = fields == [("", "", None)]
        if not ok:
            raise VocabularyError(f"template {t!r:.80} must hold '{{}}' exactly once (where the class name goes) "
                                  "and no other '{...}'")
    return out


def template_key(name: str | Sequence[str]) -> str | tuple[str, ...]:
    """A hashable key of a template set: its name, or the tuple of its (checked) templates."""
    return name if isinstance(name, str) and name in TEMPLATE_SETS else tuple(templates(name))


TEMPLATE_SETS = ("single", "vild", "imagenet")


def encode_text_tokens(clip_model, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP text features for token ids [N, 77] -> [N, D] (not normalised).

    Runs only up to the longest prompt's end-of-text token: CLIP's causal mask
    keeps later (padding) tokens from reaching it, so this equals the full pass.
    """
    if not standard_text_tower(clip_model):
        return clip_model.encode_text(tokens)
    length = int((tokens != 0).sum(1).max().item())
    length = max(1, min(length, tokens.shape[1]))
    t = tokens[:, :length]
    x = embed_tokens(clip_model, t, torch.arange(length, device=t.device))
    mask = clip_model.attn_mask[:length, :length] if clip_model.attn_mask is not None else None
    x = clip_model.transformer(x, attn_mask=mask)
    x = clip_model.ln_final(x)
    return project_text(clip_model, x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)])


_UNWRITABLE: set = set()     # text cache folders already reported as not writable


class TextEncoder:
    """Encodes class names with prompt templates through a CLIP text tower.

    ``clip_model`` is an open_clip CLIP (or anything with ``encode_text``),
    ``tokenizer`` its tokenizer, ``identity`` a string that names the text
    weights exactly (architecture + weight tag or file fingerprint); it keys
    the cache, so two different weights must never share it.
    """

    def __init__(self, clip_model, tokenizer, identity: str, template_set: str | Sequence[str] = "vild",
                 average: str = "normalized", cache: bool = True, batch_size: int = 256,
                 memory_size: int = 64):
        if average not in ("normalized", "raw"):
            raise ValueError("average must be 'normalized' or 'raw'")
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.identity = identity
        self.template_set = template_set
        self.templates = templates(template_set)
        self.average = average
        self.cache = cache
        self.batch_size = batch_size
        self.memory_size = memory_size      # vocabularies kept in memory (least recently used dropped)
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ------------------------------------------------------------------
    def cache_key(self, names: Sequence[str], precision: str = "fp32") -> str:
        """The entry's key; fp32 keys carry no precision (entries written before it stay valid)."""
        fields = {"id": self.identity, "templates": self.templates, "avg": self.average, "names": list(names)}
        if precision != "fp32":
            fields["precision"] = precision
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def cache_path(self, names: Sequence[str], precision: str = "fp32") -> Path:
        ident = hashlib.sha256(self.identity.encode()).hexdigest()[:16]
        return vocabseg_home() / "text" / ident / f"{self.cache_key(names, precision)}.pt"

    def __call__(self, vocab: Vocabulary | Sequence[str], precision: str = "fp32") -> torch.Tensor:
        """[S, D] unit-norm fp32 embeddings, one per synonym (``vocab.prompts``); ``precision``
        ``bf16`` runs the text tower under bf16 autocast (cached apart from fp32)."""
        names = vocab.prompts if isinstance(vocab, Vocabulary) else list(vocab)
        return self.encode_names(names, precision)

    def encode_names(self, names: Sequence[str], precision: str = "fp32") -> torch.Tensor:
        key = self.cache_key(names, precision)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self.cache_path(names, precision)
        emb = None
        if self.cache and path.is_file():
            try:
                emb = load_torch_file(path)
                problem = entry_problem(emb, len(names), text_dim(self.clip_model))
            except UserError as e:  # a torn, foreign or vanished file
                problem = "unreadable (" + str(e).split(": ", 1)[-1] + ")"
            if problem:            # encode again and overwrite it
                warnings.warn(f"text cache entry {path} is {problem}: re-encoded and rewritten", stacklevel=2)
                emb = None
        if emb is None:
            emb = self._encode(names, precision)
            if self.cache:
                self._write_cache(path, emb)
        self._memory[key] = emb
        while len(self._memory) > self.memory_size:
            self._memory.popitem(last=False)
        return emb

    def _write_cache(self, path: Path, emb: torch.Tensor) -> None:
        """Write a cache entry; a cache folder that cannot be written (read-only
        ``$VOCABSEG_HOME``, full disk) leaves the entry in memory, with one warning."""
        try:
            atomic_write(path, lambda f: torch.save(emb, f))
        except OSError as e:
            root = vocabseg_home() / "text"
            if root not in _UNWRITABLE:
                _UNWRITABLE.add(root)
                warnings.warn(f"text cache {root} cannot be written ({e.strerror or type(e).__name__}): "
                              f"embeddings are kept in memory for this session only", stacklevel=3)

    @torch.no_grad()
    def _encode(self, names: Sequence[str], precision: str = "fp32") -> torch.Tensor:
        prompts = [t.format(n) for n in names for t in self.templates]
        bar = tqdm(total=len(prompts), desc="encoding prompts", unit="prompt",
                   disable=len(prompts) < 2000, leave=False)
        fast = speed.fast() and text_prefix.supports(self.clip_model)
        model = self.clip_model
        if precision == "bf16":
            low = torch.autocast(_device_of(model).type, dtype=torch.bfloat16)
            if _device_of(model).type == "cpu":
                model = bf16.twin(model, skip="visual")              # bf16 text weights, made once
        else:
            low = nullcontext()
        with low:
            f = (self.fast_prompt_features if fast else self.plain_prompt_features)(prompts, bar.update, model)
        bar.close()
        return average_templates(f.view(len(names), len(self.templates), -1), self.average)

    def plain_prompt_features(self, prompts: Sequence[str], progress, model=None) -> torch.Tensor:
        """[P, D] float CPU text features of the P prompts, ``batch_size`` at a time (``progress(n)`` after
        each), by ``model`` (default: the CLIP model; the bf16 side passes its twin)."""
        model = self.clip_model if model is None else model
        device = _device_of(model)
        feats = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(prompts[i:i + self.batch_size]).to(device)
            feats.append(encode_text_tokens(model, tokens).float().cpu())
            progress(tokens.shape[0])
        return torch.cat(feats)

    def fast_prompt_features(self, prompts: Sequence[str], progress, model=None) -> torch.Tensor:
        """``plain_prompt_features`` with token prefixes the prompts share computed once (``text_prefix``)."""
        from . import text_prefix
        model = self.clip_model if model is None else model
        tokens = self.tokenizer(prompts).to(_device_of(model))
        return text_prefix.encode_shared(model, tokens, self.batch_size, progress=progress).float().cpu()


def entry_problem(emb, rows: int, width: int) -> str | None:
    """What is wrong with a cached embedding that should be a finite float tensor
    [rows, width] of unit rows, or None when nothing is."""
    if not torch.is_tensor(emb) or not emb.is_floating_point():
        return f"not a float tensor ({type(emb).__name__})"
    if tuple(emb.shape) != (rows, width):
        return f"of shape {tuple(emb.shape)}, expected {(rows, width)}"
    if not torch.isfinite(emb).all():
        return "not finite (NaN or infinity)"
    if not torch.allclose(emb.float().norm(dim=-1), torch.ones(rows), atol=1e-3):
        return "not unit-norm"
    return None


def average_templates(features: torch.Tensor, average: str = "normalized") -> torch.Tensor:
    """[N, T, D] per-template features -> [N, D] unit-norm class embeddings."""
    if average == "normalized":
        features = F.normalize(features, dim=-1)
    return F.normalize(features.mean(dim=1), dim=-1)


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
