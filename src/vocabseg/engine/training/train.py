"""The training engine behind ``vocabseg train CONFIG``: any model with
``forward_train(batch, vocab)`` (SAN, FC-CLIP, SegCLIP), one process or many
under torchrun (DistributedDataParallel), resumable exactly.

One iteration: set the learning rates (``schedule.py``), the model's weighted
losses under autocast (bf16 / fp16 with a gradient scaler), their sum
backwards, gradient clipping (``optim.py``), an optimiser step. Every
``log_every`` iterations a JSON line goes to ``<output>/metrics.jsonl`` (and
TensorBoard when asked); every ``checkpoint_every`` iterations, and when the run
ends or is stopped (SIGTERM, Ctrl-C), the full state is saved atomically
(``checkpoint.py``); every ``eval_every`` iterations and at the end the
``eval.datasets`` are evaluated with the evaluation engine. At the end the
model is also written as a vocabseg checkpoint folder ``<output>/model``
(``vocabseg eval --model <output>/model``).

Resume (``resume=True`` or a path) restores the model, optimiser, scaler and
every process's random states and continues at the next global batch, so the
loss sequence and weights equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from ... import registry
from ...checkpoint import save_checkpoint
from ...data import get_dataset
from ...convert import mismatch
from ...errors import CheckpointError, UserError
from ...vocab import Vocabulary
from .. import distributed as D
from ..evaluation.evaluate import dataset_vocabulary, evaluate, model_convention
from .checkpoint import (
    last_checkpoint, load_training_state, preserved_rng, rng_state, save_training_state, seed_all,
    set_rng_state)
from .optim import build_optimizer, clip_gradients, param_groups
from ..precision import autocast
from .schedule import Schedule
from ..evaluation.subset import with_vocabulary
from .data import EpochBatches, SeededTransform, build_sources, concat, make_loader



def build_model(mcfg: dict):
    """``model`` section -> the preset's model (``clip_weights``; ``weights``: a
    published file or a vocabseg checkpoint to start from; other keys: build options)."""
    options = {k: v for k, v in mcfg.items() if k not in ("preset", "clip_weights", "weights")}
    try:
        return registry.build(mcfg["preset"], weights=mcfg.get("weights") or None,
                              clip_weights=mcfg.get("clip_weights"), pretrained=False, **options)
    except UserError as e:       # an unknown preset or options that do not fit it: a config error
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(str(e)) from None


def train_vocabulary(cfg: dict, sources: list, model):
    """``data.vocabulary`` (a vocabulary string, e.g. ``coco-stuff:san``, or a subset of
    the benchmark's classes: see ``subset.py``), else the benchmark's names in the
    method's convention, else None (captions)."""
    if cfg["data"]["vocabulary"]:
        return Vocabulary.resolve(cfg["data"]["vocabulary"])
    bench = [s for s in sources if hasattr(s, "vocabulary_for")]
    return dataset_vocabulary(bench[0], "auto", model_convention(model))[0] if bench else None


def seen_vocabulary(vocab: Vocabulary, unseen: list) -> Vocabulary:
    """``vocab`` without the ``unseen`` classes (names: any synonym, case-insensitive; or indices):
    the unseen-class protocol trains on the rest (their pixels ignored) and evaluates on all."""
    if vocab is None:
        raise ValueError("data.unseen needs a labelled training source (caption data has no classes)")
    owner = {s.lower(): i for i, syns in enumerate(vocab.classes) for s in syns}
    drop = set()
    for u in unseen:
        i = u if isinstance(u, int) and not isinstance(u, bool) else owner.get(str(u).lower())
        if i is None or not 0 <= i < len(vocab):
            raise ValueError(f"data.unseen: {u!r} is not a class of the training vocabulary "
                             f"({', '.join(vocab.names[:10])}{', ...' if len(vocab) > 10 else ''})")
        drop.add(i)
    if len(drop) == len(vocab):
        raise ValueError("data.unseen leaves no class to train on")
    keep = [c for i, c in enumerate(vocab.classes) if i not in drop]
    bg = vocab.background
    return Vocabulary(tuple(keep), None if bg is None or bg in drop else bg - sum(d < bg for d in drop))


def eval_datasets(cfg: dict) -> dict:
    """``eval.datasets`` read with ``eval.split`` -> {name: reader}. ``same``: each own-data
    training source (``folder:`` / ``coco:``) read with ``eval.split``."""
    from ...data.sources import is_source
    ev, names, own = cfg["eval"], [], []
    for name in ev["datasets"]:
        if name == "same":
            train = cfg["data"]["train"]
            own = [s["dataset"] for s in (train if isinstance(train, list) else [train])
                   if is_source(s.get("dataset"))]
            if not own:
                raise ValueError("eval.datasets: 'same' evaluates the training sources given as folder:PATH or "
                                 "coco:FILE.json, and data.train has none")
            names += own
        else:
            names.append(name)
    out = {}
    for name in names:
        try:
            ds = get_dataset(name, ev["split"], ev["root"] or cfg["data"]["root"])
        except KeyError as e:
            raise ValueError(f"eval.datasets: {e.args[0]}") from None
        if not getattr(ds, "has_labels", True):
            raise ValueError(f"eval.datasets: {getattr(ds, 'spec', name)} has no labels/ folder: nothing to evaluate")
        if name in own and ds.split_file is None:
            import warnings
            warnings.warn(f"{ds.spec}: split {ev['split']} holds the training images too (no splits/ files; a COCO "
                          "file is one split), so this evaluation is on images the model trains on")
        out[ds.name if is_source(name) else name] = ds
    return out


def accumulate_gradients(step, items: list, vocab, parts: int, scaler, device_type: str, precision: str,
                         iteration: int) -> dict:
    """Forward and backward ``items`` (this process's share of the global batch) in ``parts``
    equal micro-batches; each micro-batch's loss is weighted by its share of the items, so the
    gradients sum to those of the mean loss over the items. Losses normalised by more than the
    image count (the model's ``loss_totals``, e.g. the number of target masks) get the step's
    totals (all-reduced over processes) with every micro-batch, so they too sum to the large
    batch's. Under DistributedDataParallel the gradients are all-reduced once, on the last
    micro-batch (``no_sync`` before). -> the weighted losses, detached."""
    import contextlib
    ddp = isinstance(step, nn.parallel.DistributedDataParallel)
    totals = step_totals((step.module if ddp else step).model, items) if parts > 1 else {}
    size = len(items) // parts
    total: dict = {}
    for j in range(parts):
        chunk = items[j * size:(j + 1) * size]
        share = len(chunk) / len(items)
        norm = {**totals, "share": share} if totals else None
        sync = step.no_sync() if ddp and j < parts - 1 else contextlib.nullcontext()
        with sync:
            with autocast(device_type, precision):
                losses = step(chunk, vocab) if norm is None else step(chunk, vocab, norm)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss.item()} at iteration {iteration}: "
                                         + ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items()))
            scaler.scale(loss * share).backward()
        for k, v in losses.items():
            total[k] = total.get(k, 0.0) + v.detach() * share
    return total


def step_totals(model, items: list) -> dict:
    """``model.loss_totals(items)`` summed over processes and divided by their number ({} for
    losses that are means over images)."""
    totals = model.loss_totals(items)
    if totals and D.world_size() > 1:
        keys = sorted(totals)
        t = D.all_reduce_sum(torch.tensor([float(totals[k]) for k in keys], dtype=torch.float64))
        totals = {k: v / D.world_size() for k, v in zip(keys, t.tolist())}
    return totals


class TrainStep(nn.Module):
    """``forward(batch, vocab)`` = ``model.forward_train`` (what DDP wraps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, vocab, norm=None):
        if norm is None:
            return self.model.forward_train(batch, vocab)
        return self.model.forward_train(batch, vocab, norm=norm)


class _Stop:
    """SIGTERM / first Ctrl-C ask for a clean stop after the current iteration."""

    def __init__(self):
        self.signal = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:     # not the main thread
                pass
        return self

    def _handle(self, sig, frame):
        if self.signal and sig == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = sig

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_eval(model, cfg: dict, datasets: dict, iteration: int, output_dir: Path, workers: int) -> dict:
    """Evaluate ``datasets`` ({name: reader} of ``eval.datasets``; random states untouched)
    -> {dataset: metrics}."""
    import dataclasses
    ev = cfg["eval"]
    saved = model.protocol
    out = {}
    try:
        with preserved_rng():
            model.protocol = dataclasses.replace(saved, **ev["protocol"])
            model.reset_text_cache()
            for name, ds in datasets.items():
                r = evaluate(model, ds, templates=ev["templates"], batch_size=ev["batch_size"], workers=workers,
                             limit=ev["limit"], progress=False, convention=ev["vocab_convention"])
                out[name] = {k: r[k] for k in ("miou_gt", "miou_any", "fwiou", "macc", "pacc", "images")}
                if cfg["data"]["unseen"]:
                    out[name].update(seen_unseen(r["per_class_iou"], cfg["data"]["unseen"]))
                    r.update(out[name])
                if "pq" in r:
                    out[name]["pq"] = r["pq"]["all"]["pq"]
                if D.is_main():
                    path = output_dir / "eval" / f"iter_{iteration:08d}_{name}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({"iteration": iteration, **r}, indent=1))
    finally:
        model.protocol = saved
        model.train()
    return out


def seen_unseen(per_class_iou: dict, unseen: list) -> dict:
    """``miou_seen`` / ``miou_unseen``: mean IoU over the classes (that occur) outside / among
    ``unseen`` (display names or indices into the evaluated vocabulary), and their harmonic mean."""
    names = list(per_class_iou)
    low = {str(u).lower() for u in unseen if not isinstance(u, int)} | \
        {names[u].lower() for u in unseen if isinstance(u, int) and 0 <= u < len(names)}
    groups = {"miou_seen": [], "miou_unseen": []}
    for n, v in per_class_iou.items():
        if v is not None:
            groups["miou_unseen" if n.lower() in low else "miou_seen"].append(v)
    out = {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}
    s, u = out["miou_seen"], out["miou_unseen"]
    out["miou_harmonic"] = 2 * s * u / (s + u) if s and u else None
    return out


class MetricsLog:
    """JSON lines in ``metrics.jsonl`` (+ TensorBoard scalars), written by process 0."""

    def __init__(self, output_dir: Path, start: int, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        self.tb = None
        if not D.is_main():
            return
        if self.path.exists():    # a resumed run: drop lines past the checkpoint
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("iter", 0) <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("train.tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not D.is_main():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in _flat(record).items():
                if isinstance(v, (int, float)) and k != "iter":
                    self.tb.add_scalar(k, v, record["iter"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train(cfg: dict, output_dir: str | Path | None = None, resume: bool | str | Path = False,
          device: str | None = None, progress: bool = True, model=None) -> dict:
    """Run a validated config (``config.load_config``). Returns a summary dict with
    ``iteration``, ``total``, ``stopped`` (a signal ended the run early), ``output_dir``,
    ``checkpoint``, ``last_loss``, ``eval`` (last evaluation) and ``model`` (the trained module).
    ``model``: a SegModel to train instead of building ``cfg.model`` (its ``config`` names a preset)."""
    from tqdm.auto import tqdm
    t_cfg, o_cfg = cfg["train"], cfg["optim"]
    output_dir = Path(output_dir or t_cfg["output_dir"] or "")
    if not str(output_dir) or str(output_dir) == ".":
        raise ValueError("no output folder: set train.output_dir or pass --output DIR")
    eval_sets = eval_datasets(cfg)    # read once; a missing evaluation set fails now, not after hours of training
    dist = D.init(device)
    seed = t_cfg["seed"]
    seed_all(seed)                                    # identical initial weights on every process
    model = (build_model(cfg["model"]) if model is None else model).to(dist.device)
    if not model.trainable:
        raise ValueError(f"model {cfg['model']['preset']} has no forward_train: it cannot be trained")
    if t_cfg["activation_checkpointing"]:
        model.set_activation_checkpointing(True)
    sources = build_sources(cfg["data"])
    for s in sources:
        if not getattr(s, "has_labels", True):
            raise ValueError(f"data.train: {getattr(s, 'spec', s.name)} has no labels/ folder: nothing to train on")
    vocab = train_vocabulary(cfg, sources, model)
    if cfg["data"]["unseen"]:
        vocab = seen_vocabulary(vocab, cfg["data"]["unseen"])
    if vocab is not None:        # benchmark labels follow the training vocabulary (a subset: others ignored)
        sources = [with_vocabulary(s, vocab) if hasattr(s, "vocabulary_for") else s for s in sources]
    train_set = concat(sources)
    transform = model.train_transform(cfg)
    ignore = getattr(sources[0], "ignore_index", None)
    data = SeededTransform(train_set, transform, seed, ignore)
    batch, accumulate = t_cfg["batch_size"], t_cfg["accumulate"]
    if batch % dist.world_size == 0 and (batch // dist.world_size) % accumulate:
        raise ValueError(f"train.batch_size {batch} gives each of the {dist.world_size} processes "
                         f"{batch // dist.world_size} images, which train.accumulate {accumulate} does not divide")
    per_epoch = len(train_set) // batch
    if per_epoch == 0:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than train.batch_size {batch}")
    s_cfg = cfg["schedule"]
    total = s_cfg["iterations"] or math.ceil(s_cfg["epochs"] * per_epoch)
    schedule = Schedule.from_config(s_cfg, total)
    optimizer = build_optimizer(param_groups(model, cfg), o_cfg)
    precision = t_cfg["precision"]
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision == "fp16")

    start = 0
    if resume:
        if resume is True and not output_dir.is_dir():
            raise FileNotFoundError(f"nothing to resume: no run folder {output_dir}")
        state = load_training_state(output_dir if resume is True else resume)
        for line in state["skipped"] if dist.is_main else ():
            print(f"warning: {line}; resuming from {state['path']}", flush=True)
        problem = mismatch(model.state_dict(), state["model"])
        if problem:
            raise CheckpointError(f"{state['path']} does not fit this run's model {cfg['model']['preset']} "
                                  f"(a checkpoint of another config?)" + problem)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        if state.get("world_size", 1) != dist.world_size and dist.is_main:
            print(f"warning: the checkpoint was written by {state['world_size']} processes, this run has "
                  f"{dist.world_size}: data order is kept, random states are not", flush=True)
        set_rng_state(state["rng"][dist.rank % len(state["rng"])])
    else:
        seed_all(seed + dist.rank)                    # per-process training randomness
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    step = TrainStep(model)
    if dist.world_size > 1:
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=t_cfg["find_unused_parameters"])
    log = MetricsLog(output_dir, start, t_cfg["tensorboard"])
    workers = cfg["data"]["workers"]

    def save(it: int) -> Path | None:
        rngs = D.all_gather_objects(rng_state())
        if not dist.is_main:
            return None
        return save_training_state(output_dir, {
            "iteration": it, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "schedule": schedule.state_dict(), "rng": rngs,
            "world_size": dist.world_size, "config": cfg}, keep=t_cfg["keep_checkpoints"])

    it, saved_at, evaluated, last_eval, last_loss = start, start, -1, None, None
    bar = tqdm(total=total, initial=start, unit="it", desc="train", disable=not (progress and dist.is_main))
    model.train()
    tick = time.time()
    with _Stop() as stop:
        while it < total and not stop.signal:
            epoch, position = divmod(it, per_epoch)
            batches = EpochBatches(len(train_set), batch, dist.rank, dist.world_size, seed, epoch, position)
            loader = make_loader(data, batches, workers, pin=dist.device.type == "cuda")
            for items in loader:
                schedule.apply(optimizer, it)
                optimizer.zero_grad(set_to_none=True)
                losses = accumulate_gradients(step, items, vocab, accumulate, scaler, dist.device.type, precision,
                                              it + 1)
                loss = sum(losses.values())
                scaler.unscale_(optimizer)
                grad_norm = clip_gradients(optimizer, o_cfg["clip_grad_norm"], o_cfg["clip_grad_type"])
                scaler.step(optimizer)
                scaler.update()
                it += 1
                bar.update(1)
                if it % t_cfg["log_every"] == 0 or it == total:
                    values = D.all_reduce_sum(torch.stack([loss.detach().float()] + [v.detach().float()
                                              for v in losses.values()]).cpu()) / dist.world_size
                    last_loss = float(values[0])
                    record = {"iter": it, "epoch": epoch, "loss": last_loss,
                              **{k: float(v) for k, v in zip(losses, values[1:])},
                              "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                              "seconds_per_iter": round((time.time() - tick) / t_cfg["log_every"], 4)}
                    log.write(record)
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    tick = time.time()
                if dist.world_size > 1:    # every process stops at the same iteration
                    flag = D.all_reduce_sum(torch.tensor([stop.signal], dtype=torch.int64))
                    stop.signal = stop.signal or (int(flag.item()) and signal.SIGTERM)
                if t_cfg["checkpoint_every"] and it % t_cfg["checkpoint_every"] == 0:
                    save(it)
                    saved_at = it
                if t_cfg["eval_every"] and it % t_cfg["eval_every"] == 0 and cfg["eval"]["datasets"]:
                    last_eval = run_eval(model, cfg, eval_sets, it, output_dir, workers)
                    evaluated = it
                    log.write({"iter": it, "eval": last_eval})
                if stop.signal or it >= total:
                    break
        bar.close()
        path = save(it) if saved_at != it else None
        if path is None and dist.is_main:
            path = last_checkpoint(output_dir)
        if not stop.signal:
            if cfg["eval"]["datasets"] and evaluated != it:
                last_eval = run_eval(model, cfg, eval_sets, it, output_dir, workers)
                log.write({"iter": it, "eval": last_eval})
            if dist.is_main:
                save_checkpoint(model, output_dir / "model", extra={"iteration": it})
    log.close()
    D.barrier()
    model.eval()
    return {"iteration": it, "total": total, "stopped": bool(stop.signal), "signal": int(stop.signal),
            "output_dir": str(output_dir), "checkpoint": str(path) if path else None, "last_loss": last_loss,
            "eval": last_eval, "model": model}
