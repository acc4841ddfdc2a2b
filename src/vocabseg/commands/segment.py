"""`vocabseg segment IMAGE|DIR ... --labels "a; b, c"`: segment images and write, per
image, a label PNG (ids index the vocabulary), an overlay PNG with a legend and a
JSON summary into --out. A bad image is reported in one line and the others are
still processed (exit status 1 then). A file in --out that vocabseg did not write
for the same image is never replaced without --overwrite: --out keeps a manifest of
what vocabseg wrote there (see ``vocabseg.outputs``), and the JSON records the
source image. Under torchrun the images are shared out between the processes."""
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
    p.add_argument("--overwrite", action="store_true", help="replace files in --out that vocabseg did not write "
                                                            "for the same image (default: refuse)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "auto"],
                   help="image side in bf16 on a GPU or a CPU with native bf16 (avx512_bf16 / amx_bf16), fp16 on a "
                        "GPU; int8: int8 linear weights on a CPU with VNNI / AMX; auto: bf16 where native, else fp32 "
                        "(default fp32; the head always runs fp32)")
    p.add_argument("--save-scores", action="store_true", help="also save the [C, H, W] score map as .npy")
    p.add_argument("--show-groups", action="store_true", help="SegCLIP: also save the region assignment as an image")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="semantic task: run N images (crops of equal padded size) through the model together")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over short sides 320..1120 "
                                                     "and flips (semantic task; 12x slower)")
    from ..engine.inference.refine import REFINE_HELP
    p.add_argument("--refine", default=None, metavar="SPEC", help=f"post-process semantic scores: {REFINE_HELP}")
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


def check_options(args) -> None:
    """Option combinations that are wrong whatever the model: refused before it loads."""
    from ..errors import UserError
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.tta and args.task != "semantic":
        raise UserError("--tta applies to --task semantic only")
    from ..engine.inference.refine import parse_refine
    if parse_refine(args.refine) and (args.task != "semantic" or args.tta):
        raise UserError("--refine applies to --task semantic without --tta")
    if args.save_scores and args.task != "semantic":
        raise UserError("--save-scores applies to --task semantic only")
    if args.batch_size > 1 and (args.task != "semantic" or args.show_groups or args.tta):
        raise UserError("--batch-size works for the semantic task without --show-groups or --tta (use --batch-size 1)")


def output_suffixes(args) -> tuple[str, ...]:
    from ..outputs import GROUPS, SCORES, SUFFIXES
    return SUFFIXES[args.task] + ((SCORES,) if args.save_scores and args.task == "semantic" else ()) \
        + ((GROUPS,) if args.show_groups else ())


def gather_inputs(inputs, say) -> list[Path]:
    """The images named or in the folders given, each once (a file given twice is
    segmented once); vocabseg's own outputs and hidden files in a folder are skipped."""
    from ..images import list_images
    from ..outputs import source_id
    skipped: list[Path] = []
    paths, seen = [], set()
    for p in list_images(inputs, skipped):
        key = source_id(p)
        if key in seen:
            say(f"{p} is given more than once; segmenting it once")
            continue
        seen.add(key)
        paths.append(p)
    if skipped:
        say(f"skipping {len(skipped)} file(s) in the input folder(s) that are vocabseg's own outputs or hidden")
    return paths


def run(args) -> int:
    from tqdm.auto import tqdm
    from ..api import Segmenter, check_precision, load_model
    from ..errors import ImageError, UserError
    from ..images import check_image_file
    from ..limits import DEFAULT_MAX_PIXELS, check_image, parse_max_pixels
    from ..outputs import check_out_folder, check_targets, plan_names, read_manifest, source_id, write_manifest
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def say(msg: str) -> None:
        if rank == 0:
            tqdm.write(f"vocabseg segment: {msg}", file=sys.stderr)

    vocab = resolve_vocabulary(args)
    check_device(args.device)
    check_precision(args.precision, args.device, args.model)     # the preset's measured gate too, before any output
    check_options(args)
    limit = DEFAULT_MAX_PIXELS if args.max_pixels is None else parse_max_pixels(args.max_pixels)
    out = check_out_folder(args.out)
    paths = gather_inputs(args.inputs, say)
    if not paths:
        raise UserError("no images found in " + ", ".join(args.inputs))
    suffixes = output_suffixes(args)
    stems, notes = plan_names(paths, suffixes)
    for note in notes:
        say(note)
    planned = list(zip(paths, stems))
    check_targets(out, planned, suffixes, args.overwrite)
    if world > 1:       # a process group only to finish together: torchrun stops the others at a non-zero exit
        from ..engine import distributed
        distributed.init("cpu" if args.device == "cpu" else None)
    mine, failed = [], 0
    for path, stem in planned[rank::world]:
        try:
            check_image_file(path)
            check_image(path, limit)
            mine.append((path, stem))
        except ImageError as e:
            tqdm.write(f"vocabseg segment: error: {e}", file=sys.stderr)
            failed += 1
    total = len(mine) + failed
    if not mine and world == 1:
        print(f"vocabseg segment: none of the {total} images can be segmented; nothing written", file=sys.stderr)
        return 1
    model = load_model(args.model, weights=args.weights, clip_weights=args.clip_weights, device=args.device)
    seg = Segmenter(model, templates=args.templates, precision=args.precision, max_pixels=None, refine=args.refine)
    if args.task not in seg.tasks:
        raise UserError(f"model {seg.name} does not do {args.task} segmentation (it does: {', '.join(seg.tasks)})")
    if args.show_groups and not model.region_groups:
        raise UserError(f"--show-groups needs a model with region groups (SegCLIP), not {seg.name}")
    before, written = read_manifest(out), {}
    claims = {stem + s: source_id(p) for p, stem in planned for s in suffixes}
    existed = {n for n in claims if os.path.lexists(out / n)}
    if rank == 0:       # claimed before any output exists, so an interrupted run leaves no unowned file
        write_manifest(out, {**before, **claims}, claimed=claims)
    start = time.perf_counter()
    bar = tqdm(total=len(mine), desc="segmenting", unit="image", disable=rank != 0 or len(mine) < 2)
    try:
        for i in range(0, len(mine), args.batch_size):
            group = mine[i:i + args.batch_size]
            failed += _segment_group(seg, group, vocab, args, out, written)
            bar.update(len(group))
    finally:
        bar.close()
        if world > 1:
            distributed.barrier()
        if rank == 0:   # what was there before and what this run wrote (new files, replaced ones)
            final = {**before, **{n: s for n, s in claims.items()
                                  if n in written or world > 1 or (n not in existed and os.path.lexists(out / n))}}
            write_manifest(out, {n: s for n, s in final.items() if os.path.lexists(out / n)})
    done, seconds = total - failed, time.perf_counter() - start
    who = f" [process {rank + 1} of {world}]" if world > 1 else ""
    print(f"vocabseg segment{who}: {done} of {total} images written to {out}/ in {seconds:.1f} s "
          f"({done / max(seconds, 1e-9):.2f} images/s)" + (f" ({failed} failed)" if failed else ""), file=sys.stderr)
    if world > 1:
        distributed.cleanup()
    return 1 if failed else 0


def _segment_group(seg, group: list, vocab, args, out: Path, written: dict) -> int:
    """Segment (path, stem) pairs (together when --batch-size > 1) and write their
    outputs; returns how many failed. Written file names go into ``written``."""
    from tqdm.auto import tqdm
    from ..errors import ImageError
    from ..images import load_image
    from ..outputs import source_id
    from ..results import _save_png
    ok, failed = [], 0
    for path, stem in group:
        try:
            if args.batch_size > 1:
                ok.append((path, stem, load_image(path)))
            else:
                ok.append((path, stem, seg(path, vocab, return_scores=args.save_scores, task=args.task, tta=args.tta)))
        except ImageError as e:
            tqdm.write(f"vocabseg segment: error: {e}", file=sys.stderr)
            failed += 1
    if args.batch_size > 1 and ok:
        results = seg.predict_batch([im for _, _, im in ok], vocab, return_scores=args.save_scores,
                                    batch_size=args.batch_size)
        ok = [(path, stem, r) for (path, stem, _), r in zip(ok, results)]
    for path, stem, result in ok:
        try:
            files = list(result.save(out, stem, source=source_id(path)).values())
            if args.show_groups:
                from ..methods.segclip.model import groups_image
                files.append(out / f"{stem}_groups.png")
                _save_png(groups_image(seg.model.group_map(seg.features), seg._image), files[-1])
        except OSError as e:
            tqdm.write(f"vocabseg segment: error: cannot write the outputs of {path}: {e.strerror or e}"
                       + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
            failed += 1
            continue
        written.update({f.name: source_id(path) for f in files})
    return failed
