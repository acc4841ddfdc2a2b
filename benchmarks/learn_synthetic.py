"""Train every tiny model a few minutes on CPU with the training engine and report
its mIoU on held-out synthetic images against chance.

Each tiny preset that has ``forward_train`` is trained through
``vocabseg.engine.train.train`` (the machinery of ``vocabseg train``) on a
synthetic dataset in its family's kind, then evaluated with
``vocabseg.engine.evaluate.evaluate`` on held-out images:

- san (and any family not listed): COCO-Stuff-layout semantic data; 2 stuff
  fills + 4 thing shapes, each class with its own colour and shape; the
  171-class SAN vocabulary.
- fcclip: COCO-panoptic-layout data, same scenes, the 133-class vocabulary.
- NAME@folder (your own data): a ``folder:`` source in the layout of the README's "Your
  own data", six classes, trained with ``train.accumulate`` 2, held out: its val split.
- segclip: image-caption shards ("a red circle and a blue square.") with no
  mask at all; held out: the same kind of images, segmented with the four
  colour names.

Chance: ``random`` draws each pixel's label uniformly among the classes present
in the held-out ground truth; ``constant`` is the best single label. mIoU is
``miou_gt`` (mean over classes in the ground truth), in percent.

``--precisions bf16 int8``: each trained model is also evaluated on the same held-out
images with its image side at that precision (``engine.precision.image_side``, as
``Segmenter(precision=...)`` runs it, bf16 text too, but past the gate table so that a
refused precision can be measured), reporting the share of held-out pixels whose
argmax equals fp32's and the mIoU difference from fp32 in points: what
``engine.precision.MEASURED`` / ``MIOU_DROP`` record for the tiny presets. A precision
this CPU does not run natively prints "not native here".

    .venv/bin/python benchmarks/learn_synthetic.py --minutes 3
    .venv/bin/python benchmarks/learn_synthetic.py --models segclip-tiny --iterations 300
    .venv/bin/python benchmarks/learn_synthetic.py --precisions bf16 int8 --minutes 1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vocabseg.data.captions import COLOURS, shape_sample, write_shards
from vocabseg.testing.synthetic import write_benchmark
from vocabseg.engine.training.config import validate
from vocabseg.engine import int8, precision
from vocabseg.engine.evaluation.evaluate import dataset_vocabulary, evaluate, model_convention
from vocabseg.engine.inference.batched import infer_batch
from vocabseg.engine.evaluation.metrics import ConfusionMatrix
from vocabseg.engine.training.train import train
from vocabseg.registry import all_specs
from vocabseg.vocab import Vocabulary

SIZE = 64


class HeldOutShapes:
    """Held-out caption-style images (coloured shapes on grey) with their colour masks,
    as an evaluation dataset: classes = the colour names, grey background ignored."""
    name, task, split, ignore_index, conventions = "shapes", "semantic", "val", 255, ()

    def __init__(self, n: int = 60, seed: int = 1234):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            image, _, label = shape_sample(rng, SIZE)
            self.items.append({"image": image, "sem_seg": torch.where(label < 0, 255, label), "image_id": str(i)})
        self.vocabulary = Vocabulary.parse("; ".join(COLOURS))
        self.num_classes = len(self.vocabulary)

    def vocabulary_for(self, convention=None):
        return self.vocabulary

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def trainable_tiny_presets() -> list[str]:
    """Tiny (test-only) presets whose model has a training recipe (``forward_train``)."""
    out = []
    for name, spec in all_specs(include_test=True).items():
        if spec.test_only:
            model = spec.build()
            if model.trainable:
                out.append(name)
    return sorted(out)


def recipe(preset: str, family: str, work: Path, iterations: int, train_images: int, seed: int,
           source: str = "benchmark"):
    """(config, held-out dataset) for one tiny model (``source`` "folder": your-own-data layout)."""
    from vocabseg.data import get_dataset
    common = {"train": {"batch_size": 8, "log_every": 1, "checkpoint_every": 0, "seed": seed,
                        "output_dir": str(work / "run")},
              "schedule": {"name": "poly", "iterations": iterations, "warmup_iters": 10}}
    if family == "segclip":
        rng = np.random.default_rng(seed)
        write_shards(work / "shards", [shape_sample(rng, SIZE)[:2] for _ in range(train_images)], per_shard=256)
        cfg = {"model": {"preset": preset},
               "data": {"train": [{"type": "webdataset", "path": str(work / "shards")}], "workers": 1,
                        "transform": {"size": SIZE, "scale": [0.6, 1.0], "sp_short_side": SIZE, "sp_scale": 64,
                                      "sp_sigma": 0.5, "sp_min_size": 32}},
               "optim": {"lr": 2e-3, "lower_lr": 2e-3, "weight_decay": 0.05, "betas": [0.9, 0.98], "eps": 1e-6,
                         "clip_grad_norm": 1.0},
               **common}
        cfg["train"]["batch_size"] = 32
        cfg["schedule"] = {"name": "warmup_cosine", "warmup_fraction": 0.15, "iterations": iterations}
        return validate(cfg), HeldOutShapes(seed=1234 + seed)
    if source == "folder":
        return folder_recipe(preset, family, work, iterations, train_images, seed, common)
    name = "coco-panoptic" if family == "fcclip" else "coco-stuff"
    data = work / "data"
    fills, shapes, vocab = distinct_classes(preset, family, name, seed)
    for split, n, s in (("train", train_images, seed), ("val", 40, seed + 1000)):
        write_benchmark(name, data, split=split, num_images=n, size=(SIZE, SIZE), seed=s, classes=(fills, shapes))
    cfg = {"model": {"preset": preset},
           "data": {"train": {"dataset": name, "split": "train"}, "root": str(data), "workers": 1,
                    "vocabulary": vocab.to_string(),
                    "transform": ({"image_size": SIZE, "min_scale": 0.8, "max_scale": 1.25} if family == "fcclip"
                                  else {"crop_size": SIZE, "short_sizes": [SIZE, 80, 96], "max_size": 256})},
           "optim": {"lr": 3e-3, "weight_decay": 1e-4, "clip_grad_norm": 1.0},
           **common}
    return validate(cfg), get_dataset(name, "val", data)


def folder_recipe(preset: str, family: str, work: Path, iterations: int, train_images: int, seed: int, common: dict):
    """Your own data: a ``folder:`` source (images/, labels/, classes.txt, splits/) written by
    ``vocabseg.testing.owndata`` with six classes the model's text tower tells apart, trained
    through ``data.train: folder:...`` with ``train.accumulate`` 2 and evaluated on its val split."""
    from vocabseg.data import get_dataset
    from vocabseg.testing.owndata import write_folder
    name = "coco-panoptic" if family == "fcclip" else "coco-stuff"
    _, _, vocab = distinct_classes(preset, family, name, seed)
    classes = [", ".join(x.replace(",", "\\,") for x in syns) for syns in vocab.classes]
    data = work / "mine"
    write_folder(data, train_images + 40, (SIZE, SIZE), seed, classes=classes, fills=2, val=40)
    cfg = {"model": {"preset": preset},
           "data": {"train": f"folder:{data}", "workers": 1,
                    "transform": ({"image_size": SIZE, "min_scale": 0.8, "max_scale": 1.25} if family == "fcclip"
                                  else {"crop_size": SIZE, "short_sizes": [SIZE, 80, 96], "max_size": 256})},
           "optim": {"lr": 3e-3, "weight_decay": 1e-4, "clip_grad_norm": 1.0}, **common}
    cfg["train"]["accumulate"] = 2
    return validate(cfg), get_dataset(f"folder:{data}", "val")


def distinct_classes(preset: str, family: str, dataset: str, seed: int, fills: int = 2, shapes: int = 4):
    """(fill classes, shape classes) in COCO category ids, and their vocabulary.

    A random tiny CLIP text tower gives nearly parallel embeddings to most class
    names (mean cosine 0.94 over COCO-Stuff's 171 under SAN's templates), and the
    SAN / FC-CLIP recipes keep the text tower frozen; so the scenes use the few
    classes the model's own text embeddings tell apart best (greedy: each next
    class has the smallest largest cosine to those already chosen)."""
    from vocabseg.data import idmaps
    from vocabseg.testing.synthetic import FAMILIES
    from vocabseg.engine.training.checkpoint import seed_all
    from vocabseg.registry import get_spec
    seed_all(seed)                                  # the weights train() will build
    model = get_spec(preset).build()
    ids = list(idmaps.COCO_PANOPTIC_IDS if dataset == "coco-panoptic" else idmaps.COCO_STUFF_IDS)
    convention = get_spec(preset).convention
    full = Vocabulary.from_dataset(dataset, convention if convention in _conventions(dataset) else None)
    text = model.text_encoder()(full)
    cos = text @ text.T
    _, fill_pool, shape_pool, _ = FAMILIES["coco"]
    pools = {"fill": [ids.index(c) for c in fill_pool if c in ids], "shape": [ids.index(c) for c in shape_pool]}
    want = {"fill": fills, "shape": shapes}
    chosen = [min(((a, b) for a in pools["fill"] for b in pools["shape"]), key=lambda p: float(cos[p]))]
    chosen = [("fill", chosen[0][0]), ("shape", chosen[0][1])]
    while len(chosen) < fills + shapes:
        kinds = [k for k in want if sum(c[0] == k for c in chosen) < want[k]]
        pool = [(k, i) for k in kinds for i in pools[k] if i not in {c[1] for c in chosen}]
        chosen.append(min(pool, key=lambda ki: max(float(cos[ki[1], c[1]]) for c in chosen)))
    order = [i for k, i in chosen if k == "fill"] + [i for k, i in chosen if k == "shape"]
    vocab = Vocabulary(tuple(full.classes[i] for i in order))
    return [ids[i] for k, i in chosen if k == "fill"], [ids[i] for k, i in chosen if k == "shape"], vocab


def _conventions(dataset: str) -> tuple:
    from vocabseg.data.benchmarks import get_benchmark
    return get_benchmark(dataset).conventions


def chance(dataset, vocab_size: int, seed: int = 0) -> tuple[float, float]:
    """(uniform random among the ground truth's classes, best constant label) miou_gt."""
    gts = [dataset[i]["sem_seg"] for i in range(len(dataset))]
    present = sorted(set(torch.cat([g.flatten() for g in gts]).tolist()) - {dataset.ignore_index})
    g = torch.Generator().manual_seed(seed)
    rand = ConfusionMatrix(vocab_size, dataset.ignore_index)
    for gt in gts:
        rand.update(torch.tensor(present)[torch.randint(len(present), gt.shape, generator=g)], gt)
    best = 0.0
    for c in present:
        const = ConfusionMatrix(vocab_size, dataset.ignore_index)
        for gt in gts:
            const.update(torch.full_like(gt, c), gt)
        best = max(best, const.metrics()["miou_gt"])
    return rand.metrics()["miou_gt"], best


def native(p: str) -> bool:
    """Whether this CPU runs precision ``p`` (bf16 / int8) natively."""
    return int8.native_int8() if p == "int8" else precision.native_bf16("cpu")


@torch.no_grad()
def held_out_labels(model, dataset, vocab, text) -> list[torch.Tensor]:
    """Each held-out image's predicted label map (the argmax of its scores), one image at a
    time at the model's current protocol (the one ``evaluate`` set)."""
    return [infer_batch(model, [dataset[i]["image"].float().div(255)], text, vocab, max_crops=1)[0].argmax(0).cpu()
            for i in range(len(dataset))]


def compare_precisions(model, dataset, vocab, precisions) -> dict:
    """{"fp32": mIoU, p: {"agreement", "miou", "diff"} or None where not native}: the held-out
    set evaluated at fp32 and with the image side at each of ``precisions`` (past the gate
    table), the share of held-out pixels whose argmax equals fp32's, mIoU difference in points.
    One image at a time (``batch_size`` 1: batched low-precision kernels round differently), so
    the mIoU and the agreement come from the same label maps, those ``Segmenter`` gives."""
    if vocab is None:
        vocab = dataset_vocabulary(dataset, "auto", model_convention(model))[0]
    encoder = model.text_encoder()
    text = encoder(vocab)
    miou = evaluate(model, dataset, vocab=vocab, text=text, batch_size=1, workers=0, progress=False)["miou_gt"]
    ref = held_out_labels(model, dataset, vocab, text)      # after evaluate: its protocol
    out = {"fp32": miou}
    for p in precisions:
        if not native(p):
            out[p] = None
            continue
        low_text = encoder(vocab, precision="bf16") if p == "bf16" else text   # as Segmenter does
        with precision.image_side(model, p):
            low = evaluate(model, dataset, vocab=vocab, text=low_text, batch_size=1, workers=0,
                           progress=False)["miou_gt"]
            labels = held_out_labels(model, dataset, vocab, low_text)
        same = sum(int((a == b).sum()) for a, b in zip(ref, labels))
        out[p] = {"agreement": same / sum(a.numel() for a in ref), "miou": low, "diff": low - miou}
    return out


def learn(preset: str, work: Path, iterations: int, train_images: int = 512, seed: int = 0,
          precisions=(), keep_model: bool = False) -> dict:
    """Train ``preset`` (``NAME@folder``: on a folder source) for ``iterations`` and evaluate it
    on held-out images (and at ``precisions``: ``compare_precisions``; ``keep_model``: the
    result holds the trained model and its held-out set too)."""
    from vocabseg.registry import get_spec
    preset, _, source = preset.partition("@")
    family = get_spec(preset).family
    cfg, held_out = recipe(preset, family, Path(work), iterations, train_images, seed, source or "benchmark")
    t0 = time.time()
    out = train(cfg, progress=False)
    minutes = (time.time() - t0) / 60
    model = out["model"]
    model.protocol = type(model.protocol)(**{**model.protocol.to_dict(), "short_side": SIZE, "max_side": 4 * SIZE})
    vocab = Vocabulary.resolve(cfg["data"]["vocabulary"]) if cfg["data"]["vocabulary"] else None
    result = evaluate(model, held_out, vocab=vocab, batch_size=8, workers=0, progress=False)
    extra = {"precisions": compare_precisions(model, held_out, vocab, precisions)} if precisions else {}
    if keep_model:
        extra.update(trained=model, held_out=held_out, vocab=vocab)
    if vocab is not None:
        from vocabseg.engine.evaluation.subset import with_vocabulary
        held_out = with_vocabulary(held_out, vocab)
    rand, const = chance(held_out, held_out.num_classes)
    losses = [line for line in (Path(cfg["train"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    import json
    return {"model": preset + (f" ({source} source)" if source else ""), "iterations": iterations, "minutes": minutes,
            "miou": result["miou_gt"],
            "miou_any": result["miou_any"], "chance_random": rand, "chance_constant": const,
            "first_loss": json.loads(losses[0])["loss"], "last_loss": out["last_loss"],
            "pq": result.get("pq", {}).get("all", {}).get("pq"), **extra}


def calibrate(preset: str, minutes: float, train_images: int, seed: int) -> int:
    """Iterations that fit in ``minutes``: the median iteration time of a short run."""
    import json
    with tempfile.TemporaryDirectory() as tmp:
        from vocabseg.registry import get_spec
        name, _, source = preset.partition("@")
        cfg, _ = recipe(name, get_spec(name).family, Path(tmp), 10, min(train_images, 128), seed, source or "benchmark")
        train(cfg, progress=False)
        lines = (Path(cfg["train"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()
        per_iter = float(np.median([json.loads(x)["seconds_per_iter"] for x in lines if '"loss"' in x][2:]))
    return max(20, int(minutes * 60 / per_iter))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None,
                    help="tiny presets, NAME@folder for your-own-data layout (default: every one with forward_train, "
                         "and san-tiny@folder)")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time per model (sets the iterations)")
    ap.add_argument("--iterations", type=int, default=None, help="fixed iterations instead of --minutes")
    ap.add_argument("--train-images", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models gain little from more)")
    ap.add_argument("--precisions", nargs="*", default=[], choices=["bf16", "int8"],
                    help="also evaluate each trained model with its image side at these precisions: argmax "
                         "agreement with fp32 and held-out mIoU difference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.models or trainable_tiny_presets() + ["san-tiny@folder"]:
        iters = args.iterations or calibrate(preset, args.minutes, args.train_images, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            r = learn(preset, Path(tmp), iters, args.train_images, args.seed, args.precisions)
        rows.append(r)
        print(f"{preset}: {iters} iterations, {r['minutes']:.1f} min, loss {r['first_loss']:.3f} -> "
              f"{r['last_loss']:.3f}, held-out mIoU {r['miou']:.1f}", flush=True)
        for p in args.precisions:
            print(f"  {p}: {precision_text(r['precisions'], p)}", flush=True)
    print("\n| model | iterations | minutes | held-out mIoU | chance: random | chance: constant |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['iterations']} | {r['minutes']:.1f} | {r['miou']:.1f} | "
              f"{r['chance_random']:.1f} | {r['chance_constant']:.1f} |")
    if args.precisions:
        print(f"\nCPU flags: {', '.join((*precision.cpu_flags(), *int8.cpu_flags())) or 'none'}; torch "
              f"{torch.__version__}, {args.threads} thread(s)")
        print("| model | precision | argmax = fp32 | mIoU fp32 | mIoU | difference (points) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            for p in args.precisions:
                m = r["precisions"][p]
                cells = ("not native here", "", "", "") if m is None else (
                    f"{100 * m['agreement']:.2f} %", f"{r['precisions']['fp32']:.2f}", f"{m['miou']:.2f}",
                    f"{m['diff']:+.2f}")
                print(f"| {r['model']} | {p} | " + " | ".join(cells) + " |")


def precision_text(result: dict, p: str) -> str:
    m = result[p]
    if m is None:
        return "not native here"
    return (f"argmax = fp32 on {100 * m['agreement']:.2f} % of held-out pixels, mIoU {result['fp32']:.2f} -> "
            f"{m['miou']:.2f} ({m['diff']:+.2f} points)")


if __name__ == "__main__":
    main()
