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
    p.add_argument("--size", action="append", default=None, metavar="HxW",
                   help="window input size of a model that cannot take any size (repeat for several; "
                        "one ONNX file each; default: the protocol's first)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    return p


def run(args) -> int:
    from ..api import load_model
    from ..export import export
    from ..export.onnx import need_onnx
    need_onnx()        # before building a model
    sizes = [parse_size(s) for s in args.size or []]
    model = load_model(args.model, weights=args.weights, clip_weights=args.clip_weights)
    meta = export(model, args.out, overwrite=args.overwrite, sizes=sizes or None)
    sizes = "any input size" if meta["dynamic_size"] else \
        "input " + ", ".join("{}x{}".format(*f["size"]) for f in meta["files"]) + " only"
    print(f"{args.out}: {meta['preset']} image side as ONNX ({sizes}); "
          f"max abs difference from PyTorch {meta['max_abs_diff']:.2g}")
    return 0


def parse_size(text: str) -> tuple[int, int]:
    from ..errors import UserError
    h, _, w = text.lower().partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise UserError(f"--size {text}: expected HxW in pixels, e.g. 128x192")
    return int(h), int(w)
