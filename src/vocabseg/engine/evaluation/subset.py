"""Train or evaluate with a vocabulary other than a dataset's own class list.

``with_vocabulary(dataset, vocab)``: when ``vocab`` has as many classes as the
dataset, class i is class i (another naming convention); otherwise each class of
``vocab`` is found in the dataset by name (any synonym of its default list or of
a published convention, case-insensitive) and the labels are remapped to
``vocab``'s indices, every other class becoming ignored (semantic) or VOID
(panoptic) — e.g. training on seen classes only, or a quick run on a few classes.
"""
from __future__ import annotations

import torch

from ...vocab import Vocabulary


def class_map(dataset, vocab: Vocabulary) -> torch.Tensor:
    """LongTensor [dataset classes]: the ``vocab`` index of each dataset class, or -1."""
    lists = [dataset.vocabulary_for(None)] + [dataset.vocabulary_for(c) for c in getattr(dataset, "conventions", ())]
    owner: dict[str, int] = {}
    for vl in lists:
        for i, syns in enumerate(vl.classes):
            for s in syns:
                owner.setdefault(s.lower(), i)
    lut = torch.full((dataset.num_classes,), -1, dtype=torch.long)
    for j, syns in enumerate(vocab.classes):
        hits = {owner[s.lower()] for s in syns if s.lower() in owner}
        if len(hits) != 1:
            what = "is not a class of" if not hits else "names several classes of"
            raise ValueError(f"vocabulary class {syns[0]!r} {what} {dataset.name}")
        i = hits.pop()
        if lut[i] >= 0:
            raise ValueError(f"two vocabulary classes name {dataset.name} class {i}")
        lut[i] = j
    return lut


class SubsetLabels:
    """A dataset whose labels are remapped to ``vocab`` (see the module docstring)."""

    def __init__(self, dataset, vocab: Vocabulary):
        self.dataset, self.vocabulary = dataset, vocab
        self.lut = class_map(dataset, vocab)
        self.name, self.split = dataset.name, getattr(dataset, "split", None)
        self.task, self.ignore_index = getattr(dataset, "task", "semantic"), dataset.ignore_index
        self.num_classes, self.conventions, self.background = len(vocab), (), vocab.background
        things = getattr(dataset, "thing_ids", None)
        self.thing_ids = None if things is None else sorted(int(self.lut[t]) for t in things if self.lut[t] >= 0)

    def vocabulary_for(self, convention=None) -> Vocabulary:
        return self.vocabulary

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i) -> dict:
        item = dict(self.dataset[i])
        sem = item["sem_seg"]
        keep = sem != self.ignore_index
        new = torch.full_like(sem, self.ignore_index)
        mapped = self.lut[sem[keep].clamp(0, self.dataset.num_classes - 1)]
        new[keep] = torch.where(mapped >= 0, mapped, torch.full_like(mapped, self.ignore_index))
        item["sem_seg"] = new
        if "segments_info" in item:
            pan, segs = item["pan_seg"].clone(), []
            for s in item["segments_info"]:
                c = int(self.lut[s["category_id"]])
                if c < 0:
                    pan[pan == s["id"]] = 0
                else:
                    segs.append(dict(s, category_id=c))
            item["pan_seg"], item["segments_info"] = pan, segs
        return item


def with_vocabulary(dataset, vocab: Vocabulary):
    """``dataset`` itself when ``vocab`` has its number of classes, else ``SubsetLabels``."""
    return dataset if len(vocab) == dataset.num_classes else SubsetLabels(dataset, vocab)
