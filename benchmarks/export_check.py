"""ONNX export check of the full-size presets with random weights (issue 15):

    python benchmarks/export_check.py [PRESET ...] [--image HxW] [--repeat N] [--threads N]

For each preset: export the image side (`vocabseg.export`), then on one random image
compare the score maps of ONNX Runtime and eager fp32 (max abs difference, and how many
pixels differ by more than 1e-4 in some class) and time the
image side (`inference.encode`, median of --repeat runs after one warm-up) both ways.
Prints a markdown table; the ratio is ONNX / eager (below 1: ONNX is faster).
"""
import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import vocabseg
from vocabseg.engine import inference
from vocabseg.errors import UserError
from vocabseg.export import export
from vocabseg.registry import all_specs, get_spec

VOCAB = "wall; floor; ceiling; bed; window; cabinet; person; door; table; plant"


def median_time(model, image, repeat):
    inference.encode(model, image)          # warm-up (ONNX Runtime session, oneDNN kernels)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        inference.encode(model, image)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def check(name, size, repeat, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        img = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        torch.manual_seed(seed)
        model = get_spec(name).build(clip_weights=None)
        windows = sorted(set(inference.encode(model, x).padded))     # for a model exported one size at a time
        t = time.perf_counter()
        meta = export(model, tmp, sizes=windows)
        took = time.perf_counter() - t
        onnx, eager = vocabseg.load(tmp), vocabseg.load(tmp, runtime="torch")
        a = onnx(img, VOCAB, return_scores=True).scores
        b = eager(img, VOCAB, return_scores=True).scores
        t_onnx, t_eager = median_time(onnx.model, x, repeat), median_time(eager.model, x, repeat)
        sizes = "any" if meta["dynamic_size"] else ", ".join("{}x{}".format(*f["size"]) for f in meta["files"])
        diff = (a - b).abs()
        over = int((diff.amax(0) > 1e-4).sum())
        return (f"| {name} | {sizes} | {float(diff.max()):.2g} | {over} / {diff[0].numel()} | {t_eager:.3f} | "
                f"{t_onnx:.3f} | "
                f"{t_onnx / t_eager:.2f} | {took:.0f} |")


def image_options(p: argparse.ArgumentParser):
    """--image / --threads / --seed, shared with export_ties.py."""
    p.add_argument("--image", default="512x683", help="image size HxW (default 512x683)")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")


def parse(p: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, tuple[int, int]]:
    """Parsed arguments (torch's threads set from --threads) and the --image size."""
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, tuple(int(v) for v in args.image.lower().split("x"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", help="default: every full-size preset")
    p.add_argument("--repeat", type=int, default=3)
    image_options(p)
    args, size = parse(p, argv)
    names = args.presets or [n for n, s in all_specs(include_test=False).items()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {size[0]}x{size[1]}, "
          f"random weights (seed {args.seed})\n")
    print("| preset | ONNX input sizes | max abs diff (scores) | pixels > 1e-4 | eager image side s | "
          "ONNX image side s | ONNX / eager | export s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        try:
            print(check(name, size, args.repeat, args.seed), flush=True)
        except UserError as e:
            print(f"| {name} | not exported: {e} | | | | | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
