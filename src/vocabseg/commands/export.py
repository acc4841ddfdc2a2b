"""`vocabseg export`: write a model's image side as ONNX, with its checkpoint for the
vocabulary-dependent head; `vocabseg.load(DIR)` / `vocabseg segment --model DIR` run it."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a model's image side to ONNX", description=__doc__)
    p.add_argument("model", help="zoo name or vocabseg checkpoint folder")
    p.add_argument("--out", required=True, help="export folder to write (new or empty)")
    p.add_argument("--weights", default=None, help="published checkpoint file or vocabseg checkpoint")
    p.add_argument("--clip-weights", default=None, help="open_clip tag or local CLIP file")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    return p


def run(args) -> int:
    from ..api import load_model
    from ..export import export
    from ..export.onnx import need_onnx
    need_onnx()        # before building a model
    model = load_model(args.model, weights=args.weights, clip_weights=args.clip_weights)
    meta = export(model, args.out, overwrite=args.overwrite)
    sizes = "any input size" if meta["dynamic_size"] else "input {}x{} only".format(*meta["input_size"])
    print(f"{args.out}: {meta['preset']} image side as ONNX ({sizes}); "
          f"max abs difference from PyTorch {meta['max_abs_diff']:.2g}")
    return 0
