"""FC-CLIP training: targets, losses, augmentation and optimiser groups (the
published COCO-panoptic recipe; ``configs/fcclip-convnext-l.yaml``).

Mixed into ``models.fcclip.FCCLIP``; uses its ``forward_features``,
``classifier``, ``in_vocab_logits``, ``criterion`` and ``protocol``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.transforms import lsj_transform, panoptic_to_instances, sem_seg_to_masks
from ...model import NORM_TYPES, grouped_parameters



def item_targets(item: dict, num_classes: int) -> dict:
    """Mask-classification targets of one training item: its ``instances``
    (labels, masks), else built from ``pan_seg`` + ``segments_info`` (crowd
    skipped), else from ``sem_seg`` (one mask per class)."""
    if "instances" in item:
        t = item["instances"]
    elif "pan_seg" in item:
        t = panoptic_to_instances(item["pan_seg"], item["segments_info"])
    elif "sem_seg" in item:
        t = sem_seg_to_masks(item["sem_seg"], item.get("ignore_index", 255))
    else:
        raise ValueError("a training item needs instances, pan_seg + segments_info, or sem_seg")
    if t["labels"].numel() and int(t["labels"].max()) >= num_classes:
        raise ValueError(f"target class {int(t['labels'].max())} is outside the vocabulary of {num_classes} classes")
    return t


class FCCLIPTraining:
    def loss_totals(self, batch: list[dict]) -> dict[str, float]:
        """The criterion's normalisers (``SetCriterion.totals``) of the items' target masks."""
        counts = [len(item_targets(it, 1 << 30)["labels"]) for it in batch]
        return self.criterion.totals(counts, self.decoder.num_queries)

    def forward_train(self, batch: list[dict], vocab, norm: dict | None = None) -> dict[str, torch.Tensor]:
        """Weighted losses (class CE, mask BCE, Dice on every prediction set) for a
        batch of items with ``image`` float [3, H, W] in 0..1 and targets (see
        ``item_targets``); class ids index ``vocab`` (the training vocabulary).
        ``norm``: the step's normalisers under gradient accumulation (``SegModel.loss_totals``)."""
        device = self.device
        images, _ = self.training_images(batch)
        targets = []
        for it in batch:
            t = item_targets(it, len(vocab))
            m = t["masks"].to(device)
            masks = F.pad(m, (0, images.shape[-1] - m.shape[-1], 0, images.shape[-2] - m.shape[-2]))  # as the image
            targets.append({"labels": t["labels"].to(device), "masks": masks})
        with torch.no_grad():
            text = self.text_encoder()(vocab).to(device)
        _, outputs = self.forward_features(images)
        cls = self.classifier(text)
        preds = [{"pred_logits": self.in_vocab_logits(e, cls, vocab), "pred_masks": m} for e, m in outputs]
        out = {**preds[-1], "aux_outputs": preds[:-1]}
        losses = self.criterion(out, targets) if norm is None else self.criterion(out, targets, norm)
        return self.criterion.weighted(losses)

    def train_transform(self, cfg: dict | None = None):
        """LSJ as published (``data.transform`` or ``data``: ``image_size`` 1024,
        ``min_scale`` 0.1, ``max_scale`` 2.0): flip, resize, fixed crop -> item with
        ``image`` float [3, S, S] in 0..1 and ``instances`` (crowd segments skipped)."""
        data = (cfg or {}).get("data", {}) if isinstance(cfg, dict) else {}
        data = {**data, **(data.get("transform") or {})}
        aug = lsj_transform(int(data.get("image_size", self.image_size)), float(data.get("min_scale", 0.1)),
                            float(data.get("max_scale", 2.0)))

        def apply(item: dict) -> dict:
            out = aug(item)
            if "pan_seg" in out and "instances" not in out:
                out["instances"] = item_targets(out, 1 << 30)
            out["image"] = out["image"].float() / 255.0
            return out
        return apply

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        """AdamW groups as the published ``build_optimizer``: ``optim.weight_decay``
        (0.05), except ``weight_decay_norm`` (0) on normalisation layers and
        ``weight_decay_embed`` (0) on ``nn.Embedding`` (queries, level and void
        embeddings). Frozen CLIP parameters are left out."""
        optim = (cfg or {}).get("optim", {}) if isinstance(cfg, dict) else {}
        wd = float(optim.get("weight_decay", 0.05))
        wd_norm = float(optim.get("weight_decay_norm", 0.0))
        wd_embed = float(optim.get("weight_decay_embed", 0.0))
        groups = grouped_parameters(self, lambda module, name: "norm" if isinstance(module, NORM_TYPES) else
                                    "embed" if isinstance(module, nn.Embedding) else "decay", ("decay", "norm", "embed"))
        return [{"params": groups["decay"], "weight_decay": wd}, {"params": groups["norm"], "weight_decay": wd_norm},
                {"params": groups["embed"], "weight_decay": wd_embed}]
