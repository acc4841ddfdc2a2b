"""Train a tiny SegCLIP on synthetic image-caption pairs and segment held-out images.

Images are coloured squares / circles on grey; captions name them ("a red
circle and a blue square."). The model never sees a mask: it learns from the
captions (contrastive + reconstruction + superpixel losses, as published) and
is then asked to segment held-out images with the vocabulary of colour names
through the shared inference path. The score is mIoU over the shape pixels
(grey background ignored), against two chance baselines: a uniformly random
label per pixel and the best single constant label.

    .venv/bin/python benchmarks/segclip_synthetic.py --steps 300 --seed 0
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from vocabseg.data.captions import COLOURS, CaptionTransform, CaptionShards, shape_sample, write_shards
from vocabseg.engine.inference import infer
from vocabseg.hub import get_spec
from vocabseg.vocab import Vocabulary

COLOUR_NAMES = tuple(COLOURS)


def miou(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over classes present in the ground truth (gt < 0 ignored)."""
    valid = gt >= 0
    p, g = pred[valid], gt[valid]
    ious = []
    for c in range(num_classes):
        if (g == c).any():
            inter = ((p == c) & (g == c)).sum().item()
            union = ((p == c) | (g == c)).sum().item()
            ious.append(inter / union)
    return float(np.mean(ious))


def make_loader(root, n: int, size: int, batch: int, seed: int, workers: int = 0):
    rng = np.random.default_rng(seed)
    samples = [shape_sample(rng, size)[:2] for _ in range(n)]
    shards = CaptionShards(write_shards(root, samples, per_shard=max(1, n // 4)))
    tf = CaptionTransform(size=size, patch=16, scale=(0.6, 1.0), sp_short_side=size, sp_scale=64, sp_sigma=0.5,
                          sp_min_size=32)

    class _Mapped(torch.utils.data.Dataset):
        def __len__(self):
            return len(shards)

        def __getitem__(self, i):
            return tf(shards[i])

    return torch.utils.data.DataLoader(_Mapped(), batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, collate_fn=list)


def train(model, loader, steps: int, lr: float = 2e-3, warmup: float = 0.15, log_every: int = 0) -> list[float]:
    """AdamW (betas 0.9 / 0.98, eps 1e-6, wd 0.05 not on biases) with linear warmup +
    cosine, gradient clip 1.0, as the published recipe (one learning rate here:
    the tiny CLIP starts from random weights)."""
    groups = model.param_groups({"lr": lr, "lower_lr": lr, "weight_decay": 0.05})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
    base = [g["lr"] for g in opt.param_groups]
    model.train()
    history, step = [], 0
    while step < steps:
        for batch in loader:
            x = step / steps
            f = x / warmup if x < warmup else 0.5 * (1 + math.cos(math.pi * (x - warmup) / (1 - warmup)))
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * f
            losses = model.forward_train(batch)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            history.append(loss.item())
            step += 1
            if log_every and step % log_every == 0:
                print(f"step {step}: " + ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items()), flush=True)
            if step >= steps:
                break
    model.eval()
    model.reset_text_cache()
    return history


@torch.no_grad()
def evaluate(model, n: int = 60, size: int = 64, seed: int = 1234) -> dict:
    """mIoU on ``n`` held-out images vs the random and constant-label baselines."""
    vocab = Vocabulary.parse("; ".join(COLOUR_NAMES))
    text = model.text_encoder()(vocab)
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n):
        image, _, label = shape_sample(rng, size)
        preds.append(infer(model, image.float() / 255, text, vocab).argmax(0))
        gts.append(label)
    pred, gt = torch.stack(preds), torch.stack(gts)
    g = torch.Generator().manual_seed(0)
    random = torch.randint(0, len(vocab), gt.shape, generator=g)
    const = max(miou(torch.full_like(gt, c), gt, len(vocab)) for c in range(len(vocab)))
    return {"miou": miou(pred, gt, len(vocab)), "chance_random": miou(random, gt, len(vocab)),
            "chance_constant": const, "images": n}


def run(steps: int, root, n_train: int = 512, batch: int = 32, seed: int = 0, log_every: int = 0) -> dict:
    torch.manual_seed(seed)
    model = get_spec("segclip-tiny").build()
    loader = make_loader(root, n_train, 64, batch, seed)
    t0 = time.time()
    history = train(model, loader, steps, log_every=log_every)
    out = evaluate(model)
    out.update(steps=steps, train_seconds=round(time.time() - t0, 1), first_loss=history[0], last_loss=history[-1])
    return out


def main() -> None:
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-images", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the tiny model gains nothing from more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args.steps, tmp, n_train=args.train_images, seed=args.seed, log_every=50)
    print(f"tiny SegCLIP, {out['steps']} steps ({out['train_seconds']} s): held-out mIoU {100 * out['miou']:.1f} "
          f"vs chance {100 * out['chance_random']:.1f} (random) / {100 * out['chance_constant']:.1f} (constant) "
          f"on {out['images']} images; loss {out['first_loss']:.3f} -> {out['last_loss']:.3f}")


if __name__ == "__main__":
    main()
