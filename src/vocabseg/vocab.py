"""Vocabularies: class names with synonyms.

A vocabulary string uses ``;`` between classes and ``,`` between synonyms of one
class: ``"road; car, truck; person"`` has three classes, the second one scored as
the max over "car" and "truck"; ``\\,`` keeps a comma inside one name
(``"road\\, route"`` is the single prompt "road, route", as SAN uses). A file holds one class per line (synonyms
comma-separated, an optional ``id:`` prefix as in FC-CLIP's files is dropped).
A benchmark name (``ade150``, ``voc20``, ...) loads the class-name file shipped
with the package.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from .errors import VocabularyError

MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Vocabulary:
    """Classes, each a tuple of synonyms; ``classes[i][0]`` is the display name.

    ``background`` is the index of a class that stands for "no class" (VOC21,
    PC60, COCO-Object), or None. ``things``: per-class flags, True for countable
    objects (panoptic benchmarks), or None when unknown. Label ids in results
    index ``classes``.
    """

    classes: tuple[tuple[str, ...], ...]
    background: int | None = None
    things: tuple[bool, ...] | None = None

    def __post_init__(self):
        if not self.classes:
            raise VocabularyError("the vocabulary is empty: give at least one class name")
        if self.things is not None and len(self.things) != len(self.classes):
            raise VocabularyError(f"{len(self.things)} thing flags for {len(self.classes)} classes")
        seen: dict[str, int] = {}
        for i, syns in enumerate(self.classes):
            if not syns:
                raise VocabularyError(f"class {i} has no name")
            for s in syns:
                if not s:
                    raise VocabularyError(f"class {i} has an empty synonym")
                if len(s) > MAX_NAME_CHARS:
                    raise VocabularyError(
                        f"class name is {len(s)} characters long (at most {MAX_NAME_CHARS}): {s[:40]!r}...")
                key = s.lower()
                if key in seen and seen[key] != i:
                    raise VocabularyError(f"name {s!r} appears in classes {seen[key]} and {i}")
                if key in seen:
                    raise VocabularyError(f"name {s!r} is repeated within class {i}")
                seen[key] = i

    # --- construction -----------------------------------------------------
    @classmethod
    def parse(cls, text: str, background: int | None = None) -> "Vocabulary":
        """Parse ``"a; b, c; d"``. Newlines count as ``;``."""
        parts = [p for p in text.replace("\n", ";").split(";")]
        classes = []
        for part in parts:
            syns = tuple(_clean(s) for s in _split_synonyms(part))
            syns = tuple(s for s in syns if s)
            if syns:
                classes.append(syns)
            elif part.strip(" ,"):
                raise VocabularyError(f"cannot read class {part!r}")
        if not classes:
            raise VocabularyError(f"the vocabulary {text!r} has no class names (use ';' between classes)")
        return cls(tuple(classes), background)

    @classmethod
    def from_lines(cls, lines: Sequence[str], background: int | None = None) -> "Vocabulary":
        classes = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, sep, tail = line.partition(":")
            if sep and head.strip().isdigit():
                line = tail
            syns = tuple(s for s in (_clean(x) for x in _split_synonyms(line)) if s)
            if syns:
                classes.append(syns)
        if not classes:
            raise VocabularyError("the vocabulary file has no class names")
        return cls(tuple(classes), background)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Vocabulary":
        p = Path(path)
        if p.is_dir():
            raise VocabularyError(f"vocabulary file {p} is a folder, not a file")
        if not p.exists():
            raise VocabularyError(f"vocabulary file not found: {p}")
        try:
            data = p.read_bytes()       # a pipe too: --labels-file <(grep ... classes.txt)
        except OSError as e:
            raise VocabularyError(f"cannot read vocabulary file {p}: {e.strerror or e}") from None
        encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"    # BOMs of Windows editors
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as e:
            raise VocabularyError(f"vocabulary file {p} is not UTF-8 text (byte {data[e.start]:#04x} at offset "
                                  f"{e.start}); save it as UTF-8") from None
        if "\x00" in text:
            raise VocabularyError(f"vocabulary file {p} holds NUL bytes: not a text file")
        if not text.strip():
            raise VocabularyError(f"vocabulary file {p} is empty: write one class per line")
        try:
            return cls.from_lines(text.splitlines())
        except VocabularyError as e:
            raise VocabularyError(f"{p}: {e}") from None

    @classmethod
    def from_dataset(cls, name: str, convention: str | None = None) -> "Vocabulary":
        """A benchmark's class names, e.g. ``ade150`` or ``ade150:fcclip``.

        Conventions are files ``data/vocab/<name>[.<convention>].txt``; a file's
        first line may be ``#background <index>`` to mark a background class.
        """
        if ":" in name and convention is None:
            name, convention = name.split(":", 1)
        fname = f"{name}.{convention}.txt" if convention else f"{name}.txt"
        root = resources.files("vocabseg") / "data" / "vocab"
        f = root / fname
        if not f.is_file():
            known = sorted({x.name.split(".")[0] for x in root.iterdir() if x.name.endswith(".txt")})
            raise VocabularyError(f"unknown dataset vocabulary {name!r}"
                                  + (f" (convention {convention!r})" if convention else "")
                                  + f"; known: {', '.join(known)}")
        lines = f.read_text(encoding="utf-8").splitlines()
        bg = None
        if lines and lines[0].startswith("#background"):
            bg = int(lines[0].split()[1])
        return cls.from_lines(lines, background=bg)

    @classmethod
    def resolve(cls, spec: "str | Sequence[str] | Vocabulary") -> "Vocabulary":
        """Anything a user may pass: a Vocabulary, a list of names (each may hold
        ``,`` synonyms), a path to a file, a dataset name, or a ``;`` string."""
        if isinstance(spec, Vocabulary):
            return spec
        if isinstance(spec, (list, tuple)):
            return cls.parse(";".join(spec))
        if not isinstance(spec, str):
            raise VocabularyError(f"cannot make a vocabulary from {type(spec).__name__}")
        if ";" not in spec and "," not in spec and os.path.isfile(spec):
            return cls.from_file(spec)
        if ";" not in spec and "," not in spec and (resources.files("vocabseg") / "data" / "vocab"
                                                     / f"{spec.split(':')[0]}.txt").is_file():
            return cls.from_dataset(spec)
        return cls.parse(spec)

    # --- views ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Display name of each class (its first synonym)."""
        return [c[0] for c in self.classes]

    @property
    def prompts(self) -> list[str]:
        """Every synonym of every class, flattened in class order."""
        return [s for c in self.classes for s in c]

    @property
    def synonym_index(self) -> torch.Tensor:
        """LongTensor[S]: the class id of each entry of ``prompts``."""
        return torch.tensor([i for i, c in enumerate(self.classes) for _ in c], dtype=torch.long)

    def to_string(self) -> str:
        return "; ".join(", ".join(s.replace(",", "\\,") for s in c) for c in self.classes)


def _split_synonyms(text: str) -> list[str]:
    """Split on ``,`` except an escaped ``\\,``, which stays in the name as ``,``
    (SAN's prompts are whole strings such as ``"road, route"``)."""
    return [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", text)]


def _clean(s: str) -> str:
    return " ".join(s.strip().split())


def per_class_keep_last(logits: torch.Tensor, vocab: "Vocabulary") -> torch.Tensor:
    """[..., S + 1] synonym logits with a last no-object / void column -> [..., C + 1]
    (max over each class's synonyms; the last column kept)."""
    per_class = reduce_synonyms(logits[..., :-1], vocab.synonym_index, len(vocab), dim=-1)
    return torch.cat([per_class, logits[..., -1:]], dim=-1)


def reduce_synonyms(logits: torch.Tensor, synonym_index: torch.Tensor, num_classes: int,
                    dim: int = 1) -> torch.Tensor:
    """Max over each class's synonyms: ``logits`` has S entries along ``dim``;
    the result has ``num_classes`` entries there."""
    if logits.shape[dim] != synonym_index.numel():
        raise ValueError(f"logits have {logits.shape[dim]} entries on dim {dim}, "
                         f"vocabulary has {synonym_index.numel()} synonyms")
    if synonym_index.numel() == num_classes:
        return logits
    x = logits.movedim(dim, -1)
    out = x.new_full((*x.shape[:-1], num_classes), float("-inf"))
    idx = synonym_index.to(x.device).expand_as(x)
    out = out.scatter_reduce(-1, idx, x, reduce="amax", include_self=True)
    return out.movedim(-1, dim)
