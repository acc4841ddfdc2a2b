"""`vocabseg eval --model NAME --dataset NAME`: mIoU (both conventions), fwIoU, mAcc,
pAcc and per-class IoU; PQ and mask AP on panoptic benchmarks for models that predict
them. Prints a summary and writes JSON. Under torchrun the images are shared out
across the processes and the results are exactly the single-process ones."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
examples:
  vocabseg eval --model san-vit-b16 --dataset ade150 --out results/
  vocabseg eval --model fcclip-convnext-l --dataset coco-panoptic ade150 --limit 50
  vocabseg eval --model runs/my-san/model --dataset pc59          # a vocabseg checkpoint folder
  vocabseg eval --model sclip-vit-b16 --dataset voc20 --allow-missing   # skip images lacking a file
  torchrun --nproc_per_node 8 -m vocabseg.cli eval --model san-vit-l14 --dataset ade847
The JSON holds miou_gt (mean over classes in the ground truth), miou_any (over classes in
ground truth or prediction; a predicted-only class counts 0), fwiou, macc, pacc,
per_class_iou, confusion (top confusions; per class its recall and what it is taken for), and for
panoptic benchmarks pq {all, things, stuff} and mask_ap.
Your own data: --dataset folder:PATH (images/, labels/, classes.txt) or coco:FILE.json[:IMAGE_DIR]
  vocabseg eval --model runs/mine/model --dataset folder:data/mine --out results/ --plots
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a model on benchmarks (mIoU, PQ, mask AP)",
                              description=__doc__, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name (vocabseg models) or a vocabseg checkpoint folder")
    p.add_argument("--weights", default=None, help="published checkpoint file or vocabseg checkpoint")
    p.add_argument("--clip-weights", default=None, help="open_clip tag or CLIP weight file (training-free models)")
    p.add_argument("--dataset", required=True, nargs="+", metavar="NAME",
                   help="benchmark name(s), e.g. ade150, or your own data: folder:PATH, coco:FILE.json[:IMAGE_DIR]")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--root", default=None, help="datasets root (default $VOCABSEG_DATASETS or ./datasets)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the complete image / label pairs of a split with files missing (the number "
                        "skipped is printed and in the JSON); without it a missing file is an error")
    p.add_argument("--templates", default=None, help="prompt templates: single, vild, imagenet "
                                                     "(default: the model's published set)")
    p.add_argument("--vocab-convention", default="auto",
                   help="class names: auto (the model family's published list: san, fcclip, tf; default "
                        "names otherwise), default, fcclip, san, tf or clearclip")
    p.add_argument("--out", default=None, metavar="DIR", help="write eval_<model>_<dataset>.json here")
    p.add_argument("--plots", action="store_true",
                   help="with --out: also write confusion_<model>_<dataset>.png (row-normalised confusion matrix) and "
                        "iou_<model>_<dataset>.png (per-class IoU bars); the JSON then holds the whole matrix")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (quick runs)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="crops per forward pass (default 4; lower it for very large vocabularies on a small GPU)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..engine.inference.refine import REFINE_HELP
    p.add_argument("--refine", default=None, metavar="SPEC", help=f"post-process semantic scores: {REFINE_HELP}")
    return p


def _name(model, given: str) -> str:
    preset = model.config.get("preset")
    return preset if preset and not Path(given).exists() else Path(given).name


def run(args) -> int:
    from ..data import get_dataset
    from ..engine import distributed as D
    from ..engine.evaluation.evaluate import evaluate, summary_lines
    from ..errors import UserError
    from ..files import atomic_write
    import torch
    from ..text import TEMPLATE_SETS
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.workers < 0:
        raise UserError("--workers must be 0 (load in this process) or more")
    if args.templates is not None and args.templates not in TEMPLATE_SETS:
        raise UserError(f"unknown template set {args.templates!r}; use {', '.join(TEMPLATE_SETS)}")
    if args.plots and not args.out:
        raise UserError("--plots writes PNGs next to the JSON: give --out DIR")
    if args.out is not None:
        from ..outputs import check_out_folder
        check_out_folder(args.out)      # before hours of evaluation, not after
    convention = None if args.vocab_convention == "default" else args.vocab_convention
    from ..engine.inference.refine import parse_refine
    parse_refine(args.refine)          # a bad spec: one line before the model loads
    try:
        datasets = [get_dataset(name, args.split, args.root, allow_missing=args.allow_missing)
                    for name in args.dataset]
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    for ds in datasets:
        if not getattr(ds, "has_labels", True):
            from ..engine.evaluation.evaluate import no_labels_message
            raise UserError(no_labels_message(ds))
    dist = D.init(args.device)
    try:
        from ..api import load_model
        model = load_model(args.model, weights=args.weights, clip_weights=args.clip_weights, device=dist.device)
        name = _name(model, args.model)
        for ds in datasets:
            try:
                result = evaluate(model, ds, templates=args.templates, batch_size=args.batch_size,
                                  workers=args.workers, limit=args.limit, progress=not args.no_progress,
                                  convention=convention, matrix=args.plots, refine=args.refine)
            except ValueError as e:
                raise UserError(str(e)) from None
            result = {"model": name, "weights": args.weights, **result}
            if dist.is_main:
                print("\n".join(summary_lines(result)), flush=True)
                if args.out:
                    path = Path(args.out) / f"eval_{name}_{ds.name}.json"
                    atomic_write(path, json.dumps(result, indent=1))
                    print(f"  wrote {path}", flush=True)
                    if args.plots:
                        from ..engine.evaluation.plots import confusion_png, iou_bars_png
                        for png in (confusion_png(torch.tensor(result["confusion_matrix"]),
                                                  list(result["per_class_iou"]),
                                                  Path(args.out) / f"confusion_{name}_{ds.name}.png"),
                                    iou_bars_png(result["per_class_iou"], Path(args.out) / f"iou_{name}_{ds.name}.png")):
                            print(f"  wrote {png}", flush=True)
    finally:
        D.cleanup()
    return 0
