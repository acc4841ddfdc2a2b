"""`vocabseg bench`: how fast each model runs on this machine, with random weights (speed
does not depend on their values): median latency at the published test resolution,
FLOPs, achieved GFLOP/s against this CPU's measured fp32 matrix-multiply peak, peak
memory; with --text the text encoding of ADE-150 / ADE-847 (uncached and cached); with
--batch the images/s of `vocabseg segment DIR` at batch sizes 1 / 4 and under torchrun.
Close other programs first: timings are only meaningful on an otherwise idle machine."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="measure speed and memory of the models on this machine",
                              description=__doc__)
    p.add_argument("--models", nargs="*", default=None, metavar="NAME",
                   help="zoo names (default: every preset); none with --models and no names")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model after the warm-up (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--plain", action="store_true", help="also time the straightforward path (speed.plain_paths)")
    p.add_argument("--text", nargs="*", default=None, metavar="NAME",
                   help="time text encoding with these models' towers (default with no names: "
                        "fcclip-convnext-l san-vit-b16)")
    p.add_argument("--batch", action="store_true", help="time `vocabseg segment DIR` (batch 1 / 4, torchrun)")
    p.add_argument("--batch-model", default="san-vit-b16", help="model for --batch (default san-vit-b16)")
    p.add_argument("--batch-images", type=int, default=8, help="images for --batch (default 8)")
    p.add_argument("--precisions", nargs="*", default=None, metavar="P", choices=["bf16", "int8", "onnx"],
                   help="also time each model at these precisions in the same process (bf16 / int8 where this CPU "
                        "runs them natively; onnx: image side through ONNX Runtime), as ratios to fp32")
    p.add_argument("--all", action="store_true", help="--plain, --text, --batch and --precisions bf16 int8 onnx")
    p.add_argument("--wait-idle", action="store_true", help="before each measurement wait until the CPUs are idle")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    return p


def run(args) -> int:
    from ..engine.bench import report as bench_report
    from ..errors import UserError
    from ..registry import all_specs, get_spec
    models = list(all_specs()) if args.models is None else args.models
    text = args.text if args.text else (["fcclip-convnext-l", "san-vit-b16"] if args.text is not None or args.all
                                        else [])
    for name in models + text + ([args.batch_model] if args.batch or args.all else []):
        try:
            get_spec(name)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.batch_images < 1:
        raise UserError("--runs, --threads and --batch-images must be at least 1, --warmup at least 0")
    result = bench_report.run(models, runs=args.runs, warmup=args.warmup, threads=args.threads,
                              plain=args.plain or args.all, text_models=text, batch=args.batch or args.all,
                              batch_model=args.batch_model, batch_images=args.batch_images, wait=args.wait_idle,
                              precisions=args.precisions if args.precisions is not None
                              else (["bf16", "int8", "onnx"] if args.all else []),
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(bench_report.tables(result))
    return 0
