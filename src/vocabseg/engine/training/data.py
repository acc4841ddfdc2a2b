"""Training data for the engine: sources from the config, a deterministic
distributed batch order, and per-sample seeded augmentation.

Order: epoch e is a permutation of the (concatenated) sources drawn from
``torch.Generator().manual_seed(seed * 1_000_003 + e)``; global batch k is
positions [k*B, (k+1)*B) of it (the remainder is dropped) and process r of W
takes its slice [r*B/W, (r+1)*B/W). The same global batches are seen whatever
W is, and a resumed run restarts at the exact batch.

Augmentation: item ``i`` of epoch ``e`` is transformed with torch / numpy /
python seeded from (seed, e, i) — in a worker process or, around the call, in
the main one (global states restored) — so the data do not depend on worker
count or scheduling, or on where a run was resumed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .checkpoint import preserved_rng, seed_all


def _path(root: Path, p: str) -> str:
    return p if os.path.isabs(p) else str(root / p)


def build_source(src: dict, root: str | None):
    """One ``data.train`` entry -> a map-style dataset of items.

    ``{dataset: NAME, split: train}``: a benchmark reader (``vocabseg.data.get_dataset``);
    ``{type: webdataset, path: DIR}``: img2dataset caption shards;
    ``{type: coco-captions, json: FILE, image_root: DIR, split: train}``: COCO captions.
    Relative paths are under the datasets root."""
    from ...data.benchmarks import datasets_root
    from ...data.captions import CaptionShards, CocoCaptions
    base = datasets_root(root)
    if "dataset" in src:
        from ...data import get_dataset
        extra = set(src) - {"dataset", "split"}
        if extra:
            raise ValueError(f"data.train source {src} has unknown keys {sorted(extra)}; a benchmark takes dataset, split")
        try:
            return get_dataset(src["dataset"], src.get("split", "train"), root)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
    kind = src.get("type")
    if kind == "webdataset":
        return CaptionShards(_path(base, src["path"]), name=src.get("name", "captions"))
    if kind == "coco-captions":
        return CocoCaptions(_path(base, src["json"]), _path(base, src.get("image_root", "coco")),
                            split=src.get("split", "train"))
    raise ValueError(f"unknown data.train source type {kind!r}; use dataset: NAME, type: webdataset or "
                     "type: coco-captions")


def build_sources(data: dict) -> list:
    """``data.train`` (one source or a list) -> list of datasets."""
    srcs = data["train"] if isinstance(data["train"], list) else [data["train"]]
    return [build_source(s, data.get("root")) for s in srcs]


def concat(sources: list):
    return sources[0] if len(sources) == 1 else ConcatDataset(sources)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] % 2 ** 63)


class SeededTransform(Dataset):
    """Reads ``(epoch, index)`` keys: ``transform(dataset[index])`` with seeded random
    states, plus ``ignore_index`` of the source when the item lacks it."""

    def __init__(self, dataset, transform, seed: int, ignore_index: int | None = None):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        epoch, index = key
        item = self.dataset[index]
        if self.ignore_index is not None and "sem_seg" in item:
            item.setdefault("ignore_index", self.ignore_index)
        with preserved_rng():
            seed_all(sample_seed(self.seed, epoch, index))
            return self.transform(item) if self.transform is not None else item


class EpochBatches:
    """This process's batches of one epoch, from global batch ``start`` on: lists of
    ``(epoch, index)`` keys (see the module docstring)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int, start: int = 0):
        if global_batch % world:
            raise ValueError(f"train.batch_size {global_batch} is not divisible by the {world} processes")
        self.n, self.batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        return max(self.n // self.batch - self.start, 0)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.batch // self.world
        for k in range(self.start, self.n // self.batch):
            chunk = perm[k * self.batch + self.rank * per: k * self.batch + (self.rank + 1) * per]
            yield [(self.epoch, i) for i in chunk]


def _own_process_group(_worker_id: int) -> None:
    """Loader workers leave the trainer's process group: a SIGTERM / Ctrl-C sent to the
    group (torchrun, a terminal) reaches the trainer, which stops cleanly and then
    shuts its workers down, instead of killing the workers under it."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


def make_loader(dataset: SeededTransform, batches: EpochBatches, workers: int, pin: bool = False) -> DataLoader:
    """Batches as lists of items. The loader gets its own generator, so creating it
    (once per epoch, and at a resume) leaves the global random state alone."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=list, pin_memory=pin,
                      generator=torch.Generator().manual_seed(batches.seed * 1_000_003 + batches.epoch),
                      worker_init_fn=_own_process_group if workers else None,
                      multiprocessing_context="fork" if workers and os.name == "posix" else None)
