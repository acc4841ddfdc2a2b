"""Time the three deformable-attention implementations at FC-CLIP's pixel-decoder size
(3 levels of an 800 x 1088 input: strides 32, 16, 8; 8 heads of 32 channels, 4 points)
and check they agree.

    .venv/bin/python benchmarks/ms_deform_attn_speed.py [--size 800,1088] [--repeat 3] [--threads 1]
"""
import argparse
import time

import torch

from vocabseg.methods.fcclip.ms_deform_attn import ms_deform_attn, ms_deform_attn_gather


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="800,1088")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    h, w = map(int, args.size.split(","))
    shapes = [(h // s, w // s) for s in (32, 16, 8)]
    s = sum(a * b for a, b in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, s, 8, 32, generator=g)
    loc = torch.rand(1, s, 8, 3, 4, 2, generator=g)
    weights = torch.rand(1, s, 8, 3, 4, generator=g).softmax(-1)
    out = {}
    for impl in ("stack", "accumulate", "gather"):
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            with torch.no_grad():
                out[impl] = ms_deform_attn_gather(value, shapes, loc, weights) if impl == "gather" else \
                    ms_deform_attn(value, shapes, loc, weights, impl=impl)
            best = min(best, time.perf_counter() - t)
        print(f"{impl:10s} {best * 1000:8.1f} ms  ({s} queries, levels {shapes})")
    for impl in ("accumulate", "gather"):
        print(f"max abs difference stack vs {impl}: {(out['stack'] - out[impl]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
