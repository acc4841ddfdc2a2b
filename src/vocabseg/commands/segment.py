"""`vocabseg segment IMAGE|DIR ... --labels "a; b, c"`: segment images and write, per
image, a label PNG (ids index the vocabulary), an overlay PNG with a legend and a
JSON summary into --out. A bad image is reported in one line and the others are
still processed (exit status 1 then). Under torchrun the images are shared out
between the processes."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_VOCAB = "ade150"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("segment", help="segment images with any vocabulary", description=__doc__)
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and/or folders of images")
    voc = p.add_mutually_exclusive_group()
    voc.add_argument("--labels", metavar="STR", help="vocabulary: ';' between classes, ',' between synonyms")
    voc.add_argument("--labels-file", metavar="FILE", help="vocabulary file: one class per line, synonyms comma-separated")
    voc.add_argument("--dataset-vocab", metavar="NAME", help="a benchmark's class names, e.g. ade150 or coco-panoptic:fcclip")
    p.add_argument("--model", default=None, help="zoo name (see `vocabseg models`) or a vocabseg checkpoint folder "
                                                 "(default: san-vit-b16)")
    p.add_argument("--weights", metavar="PATH", help="a published checkpoint file as distributed, or a vocabseg checkpoint")
    p.add_argument("--clip-weights", metavar="PATH|TAG", help="CLIP weights for models built from CLIP")
    p.add_argument("--templates", default=None, help="prompt templates: single, vild or imagenet (default: the model's)")
    p.add_argument("--task", default="semantic", choices=["semantic", "panoptic", "instance"])
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="fp16 / bf16 autocast on a GPU (default fp32; CPU runs fp32 only)")
    p.add_argument("--save-scores", action="store_true", help="also save the [C, H, W] score map as .npy")
    p.add_argument("--show-groups", action="store_true", help="SegCLIP: also save the region assignment as an image")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="semantic task: run N images (crops of equal padded size) through the model together")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over short sides 320..1120 "
                                                     "and flips (semantic task; 12x slower)")
    p.add_argument("--max-pixels", default=None, metavar="N", help="refuse larger images, read from the file header "
                   "(default 40000000 = 40 MP, which fits 8 GB with ADE-150; 'none': no limit)")
    return p


def resolve_vocabulary(args):
    from ..vocab import Vocabulary
    if args.labels is not None:
        return Vocabulary.parse(args.labels)
    if args.labels_file is not None:
        return Vocabulary.from_file(args.labels_file)
    if args.dataset_vocab is not None:
        return Vocabulary.from_dataset(args.dataset_vocab)
    print(f"vocabseg segment: no --labels given; using the {DEFAULT_VOCAB} class names", file=sys.stderr)
    return Vocabulary.from_dataset(DEFAULT_VOCAB)


def check_device(device: str) -> None:
    import torch
    from ..errors import UserError
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda[:N]")


def unique_stems(paths: list[Path]) -> list[str]:
    """Output name per input: its stem, made unique with the parent folder or a counter."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem
        if stem in seen:
            stem = f"{p.parent.name}_{p.stem}" if p.parent.name else stem
            while stem in seen:
                stem = f"{p.stem}_{seen[p.stem] + 1}"
                seen[p.stem] += 1
        seen.setdefault(stem, 1)
        out.append(stem)
    return out


def within_pixel_limit(items: list, max_pixels: str | None) -> tuple[list, int]:
    """(path, stem) pairs whose image is within ``--max-pixels`` (read from the file
    headers, before the model loads), and how many were refused (one line each)."""
    from ..errors import ImageError
    from ..limits import DEFAULT_MAX_PIXELS, check_image, parse_max_pixels
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else parse_max_pixels(max_pixels)
    kept = []
    for path, stem in items:
        try:
            check_image(path, limit)
            kept.append((path, stem))
        except ImageError as e:
            print(f"vocabseg segment: error: {e}", file=sys.stderr)
    return kept, len(items) - len(kept)


def run(args) -> int:
    from tqdm.auto import tqdm
    from ..api import Segmenter, check_precision, load_model
    from ..errors import ImageError, UserError
    from ..images import list_images
    vocab = resolve_vocabulary(args)
    check_device(args.device)
    check_precision(args.precision, args.device)
    paths = list_images(args.inputs)
    if not paths:
        raise UserError("no images found in " + ", ".join(args.inputs))
    stems = unique_stems(paths)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:       # a process group only to finish together: torchrun stops the others at a non-zero exit
        from ..engine import distributed
        distributed.init("cpu" if args.device == "cpu" else None)
    mine = list(zip(paths, stems))[rank::world]
    mine, too_big = within_pixel_limit(mine, args.max_pixels)
    if too_big and not mine:
        return 1
    model = load_model(args.model, weights=args.weights, clip_weights=args.clip_weights, device=args.device)
    seg = Segmenter(model, templates=args.templates, precision=args.precision, max_pixels=None)
    if args.task not in seg.tasks:
        raise UserError(f"model {seg.name} does not do {args.task} segmentation (it does: {', '.join(seg.tasks)})")
    if args.tta and args.task != "semantic":
        raise UserError("--tta applies to --task semantic only")
    if args.show_groups and not model.region_groups:
        raise UserError(f"--show-groups needs a model with region groups (SegCLIP), not {seg.name}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.batch_size > 1 and (args.task != "semantic" or args.show_groups or args.tta):
        raise UserError("--batch-size works for the semantic task without --show-groups or --tta (use --batch-size 1)")
    out = Path(args.out)
    failed = too_big
    start = time.perf_counter()
    bar = tqdm(total=len(mine), desc="segmenting", unit="image", disable=rank != 0 or len(mine) < 2)
    for i in range(0, len(mine), args.batch_size):
        group = mine[i:i + args.batch_size]
        if args.batch_size > 1:
            failed += _segment_batch(seg, group, vocab, args, out)
            bar.update(len(group))
            continue
        path, stem = group[0]
        bar.update(1)
        try:
            result = seg(path, vocab, return_scores=args.save_scores, task=args.task, tta=args.tta)
        except ImageError as e:
            tqdm.write(f"vocabseg segment: error: {e}", file=sys.stderr)
            failed += 1
            continue
        result.save(out, stem)
        if args.show_groups:
            from ..methods.segclip.model import groups_image
            groups_image(model.group_map(seg.features), seg._image).save(out / f"{stem}_groups.png")
    bar.close()
    done, seconds = len(mine) - failed, time.perf_counter() - start
    who = f" [process {rank + 1} of {world}]" if world > 1 else ""
    print(f"vocabseg segment{who}: {done} of {len(mine)} images written to {out}/ in {seconds:.1f} s "
          f"({done / max(seconds, 1e-9):.2f} images/s)" + (f" ({failed} failed)" if failed else ""), file=sys.stderr)
    if world > 1:
        distributed.barrier()
        distributed.cleanup()
    return 1 if failed else 0


def _segment_batch(seg, group: list, vocab, args, out: Path) -> int:
    """Segment (path, stem) pairs together; returns the number of unreadable images."""
    from tqdm.auto import tqdm
    from ..errors import ImageError
    from ..images import load_image
    images, stems, failed = [], [], 0
    for path, stem in group:
        try:
            images.append(load_image(path))
            stems.append(stem)
        except ImageError as e:
            tqdm.write(f"vocabseg segment: error: {e}", file=sys.stderr)
            failed += 1
    results = seg.predict_batch(images, vocab, return_scores=args.save_scores, batch_size=args.batch_size) \
        if images else []
    for result, stem in zip(results, stems):
        result.save(out, stem)
    return failed
