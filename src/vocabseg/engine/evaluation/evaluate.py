"""Benchmark evaluation: batched inference over a dataset split, sharded across
torchrun processes, reduced exactly (see ``metrics.py`` and ``distributed.py``).

``evaluate(model, dataset)`` returns a dict (the JSON ``vocabseg eval`` writes):

- semantic: ``miou_gt``, ``miou_any``, ``fwiou``, ``macc``, ``pacc`` (percent),
  ``per_class_iou``, ``classes_gt`` / ``classes_any``, ``pixels``;
- panoptic benchmarks with a model whose ``tasks`` include "panoptic":
  ``pq`` = {all, things, stuff: {pq, sq, rq, n}} and ``per_class_pq``; with
  "instance" also ``mask_ap`` = {ap, ap50, ap75, aps, apm, apl};
- ``confusion``: ``top`` (the largest confusions: class, predicted, pixels, share of the
  class's pixels) and ``per_class`` (pixels, recall, the classes it is most taken for);
- ``images``, ``skipped`` (images left out for a missing file: ``get_dataset(...,
  allow_missing=True)``), ``vocabulary``, ``templates``, ``batch_size``, ``world_size``, ``seconds``.

A file of the dataset that cannot be read stops the evaluation with one line naming
it (``DatasetError``), also from a data-loading worker process.

A dataset is anything with ``__len__`` / ``__getitem__`` giving items with
``image`` (uint8 [3, H, W]) and ``sem_seg`` (LongTensor [H, W]), plus
``num_classes``, ``ignore_index`` and ``name`` (panoptic: items with
``pan_seg`` / ``segments_info`` and a ``thing_ids`` attribute) — the readers of
``vocabseg.data`` are.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.data import DataLoader

from ... import speed
from ...data.benchmarks import BENCHMARKS, DatasetError
from ...registry import spec_of
from .. import distributed as D
from .. import inference
from ..inference.batched import infer_batch
from .mask_ap import detections, gt_instances, mask_ap
from .plots import confusion_summary
from .metrics import ConfusionMatrix, PanopticStats, panoptic_metrics, semantic_metrics
from .subset import with_vocabulary


class _Guarded:
    """``dataset`` whose items carry a read error as ``{"error": message}`` instead of
    raising it: a worker process's exception would reach the user wrapped in a traceback."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i) -> dict:
        try:
            return self.dataset[i]
        except DatasetError as e:
            return {"error": str(e)}


def model_convention(model) -> str | None:
    """The benchmark class-name convention of ``model``'s method (its registry spec's;
    None for a model not built from a preset)."""
    spec = spec_of(model)
    return spec.convention if spec else None


def dataset_vocabulary(dataset, convention: str | None = "auto", model_convention: str | None = None):
    """(Vocabulary, convention used) of ``dataset``. ``auto``: ``model_convention`` (the
    method's published names) when the dataset ships it, else its default names."""
    if convention == "auto":
        convention = model_convention
        if convention not in getattr(dataset, "conventions", ()):
            convention = None
    elif convention and convention not in getattr(dataset, "conventions", ()):
        have = ", ".join(getattr(dataset, "conventions", ())) or "none"
        raise ValueError(f"dataset {dataset.name} has no {convention!r} class names (it has: {have})")
    return dataset.vocabulary_for(convention), convention or "default"


@torch.no_grad()
def evaluate(model, dataset, vocab=None, text=None, templates: str | None = None, batch_size: int = 4,
             workers: int = 2, limit: int | None = None, progress: bool = True, convention: str | None = "auto",
             matrix: bool = False, refine: str | None = None) -> dict:
    """Evaluate ``model`` on ``dataset`` (this process's share under torchrun) -> metrics dict
    (identical on every process). ``vocab`` defaults to ``dataset_vocabulary``; a
    vocabulary of fewer classes evaluates on those classes (``subset.py``);
    ``text`` to ``model.text_encoder(templates)(vocab)``; ``limit``: the first N images;
    ``matrix``: the result holds the whole confusion matrix too (``confusion_matrix``, rows
    ground truth); ``refine``: semantic post-processing (``inference.refine``, e.g. ``pamr``).
    A dataset without labels (a ``folder:`` source lacking labels/) is refused."""
    from tqdm.auto import tqdm
    t0 = time.time()
    used = "custom"
    if not getattr(dataset, "has_labels", True):
        raise DatasetError(no_labels_message(dataset))
    skipped = int(getattr(dataset, "skipped", 0))
    if vocab is None:
        vocab, used = dataset_vocabulary(dataset, convention, model_convention(model))
    dataset = with_vocabulary(dataset, vocab)      # fewer classes: labels remapped, the others ignored
    if dataset.name in BENCHMARKS:
        model.set_dataset(dataset.name)
    else:             # your own data: the method's defaults, at the test protocol the caller set
        protocol = model.protocol
        model.set_dataset(None)
        model.protocol = protocol
    speed.use_fast_linears(model.eval())
    device = model.device
    if text is None:
        text = model.text_encoder(templates)(vocab)
    text = text.to(device)
    panoptic = getattr(dataset, "task", "semantic") == "panoptic" and "panoptic" in model.tasks
    if panoptic and vocab.things is None and dataset.thing_ids is not None:   # the benchmark's own flags
        vocab = dataclasses.replace(vocab, things=tuple(i in set(dataset.thing_ids) for i in range(len(vocab))))
    instance = panoptic and "instance" in model.tasks

    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    dist = D.info()
    batches = D.batch_shard(n, batch_size, dist.rank, dist.world_size)
    loader = DataLoader(_Guarded(dataset), batch_sampler=batches, num_workers=workers, collate_fn=list,
                        persistent_workers=False)
    conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    pq = PanopticStats(dataset.num_classes) if panoptic else None
    gts, dets = [], []
    bar = tqdm(total=sum(map(len, batches)), unit="img", disable=not (progress and dist.is_main),
               desc=f"eval {dataset.name}" + (f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""))
    for indices, items in zip(batches, loader):
        for it in items:
            if "error" in it:
                raise DatasetError(it["error"])
        images = [it["image"].float().div(255) for it in items]
        if panoptic:   # per image: one encoding serves every output
            for idx, img, it in zip(indices, images, items):
                feats = inference.encode(model, img.to(device))
                conf.update(inference.scores(model, feats, text, vocab).argmax(0), it["sem_seg"])
                pan = inference.panoptic(model, feats, text, vocab)
                pq.update(it["pan_seg"], it["segments_info"], pan["pan_seg"].cpu(), pan["segments"])
                if instance:
                    gts.append(gt_instances(idx, it["pan_seg"], it["segments_info"], dataset.thing_ids))
                    dets.extend(detections(idx, inference.instances(model, feats, text, vocab)))
        else:
            for scores, it in zip(infer_batch(model, images, text, vocab, max_crops=batch_size, refine=refine),
                                  items):
                conf.update(scores.argmax(0), it["sem_seg"])
        bar.update(len(items))
    bar.close()

    result = {"dataset": dataset.name, "split": getattr(dataset, "split", None), "images": n,
              "skipped": skipped, "vocabulary": used, "templates": templates or model.template_set, "batch_size": batch_size,
              "world_size": dist.world_size, **({"refine": refine} if refine else {})}
    mat = D.all_reduce_sum(conf.mat)
    result.update(semantic_metrics(mat, vocab.names))
    result["confusion"] = confusion_summary(mat, vocab.names)
    if matrix:
        result["confusion_matrix"] = mat.tolist()
    if panoptic:
        stats = panoptic_metrics(D.all_reduce_sum(pq.stats), dataset.thing_ids, vocab.names)
        result["per_class_pq"] = stats.pop("per_class")
        result["pq"] = stats
    if instance:
        gathered = D.all_gather_objects((gts, dets))
        result["mask_ap"] = D.broadcast_object(
            mask_ap([g for gs, _ in gathered for g in gs], [d for _, ds in gathered for d in ds],
                    dataset.thing_ids, vocab.names) if dist.is_main else None)
    result["seconds"] = round(time.time() - t0, 2)
    return result


def no_labels_message(dataset) -> str:
    spec = getattr(dataset, "spec", dataset.name)
    return (f"{spec} has no labels (no labels/ folder): evaluation needs ground truth. Add labels/ (class-index "
            f"PNGs named as the images), or segment the images with `vocabseg segment {getattr(dataset, 'root', 'DIR')}/images --labels-file "
            f"{getattr(dataset, 'root', 'DIR')}/classes.txt`")


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines of an ``evaluate`` result."""
    def f(v):
        return "n/a" if v is None else f"{v:.2f}"
    skipped = f", {result['skipped']} skipped for a missing file" if result.get("skipped") else ""
    lines = [f"{result['dataset']} ({result['images']} images{skipped}, vocabulary {result['vocabulary']}, "
             f"templates {result['templates']})",
             f"  miou_gt  {f(result['miou_gt'])}   (mean over the {result['classes_gt']} classes in the ground truth)",
             f"  miou_any {f(result['miou_any'])}   (mean over the {result['classes_any']} classes in ground truth "
             "or prediction)",
             f"  fwIoU {f(result['fwiou'])}   mAcc {f(result['macc'])}   pAcc {f(result['pacc'])}"]
    if "pq" in result:
        for k in ("all", "things", "stuff"):
            q = result["pq"][k]
            lines.append(f"  PQ {k:<6} {f(q['pq'])}   SQ {f(q['sq'])}   RQ {f(q['rq'])}   ({q['n']} categories)")
    top = (result.get("confusion") or {}).get("top", [])[:3]
    if top:
        lines.append("  top confusions: " + ", ".join(f"{c['class']} -> {c['predicted']} {c['share']:.1f}%"
                                                        for c in top))
    if "mask_ap" in result:
        a = result["mask_ap"]
        lines.append(f"  mask AP {f(a['ap'])}   AP50 {f(a['ap50'])}   AP75 {f(a['ap75'])}")
    return lines
