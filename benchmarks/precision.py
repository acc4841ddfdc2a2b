"""bf16 and int8 against fp32 on this CPU, every preset with random weights (issue 15).

    python benchmarks/precision.py [--models a,b] [--size 512x683] [--threads 2] [--runs 2]

Per model (``get_spec(name).build(clip_weights=None)``: random weights, no download),
on one random-texture image and its benchmark vocabulary (ADE-150; random unit text
embeddings, so the head sees realistic sizes without a text tower): the share of
pixels whose argmax equals fp32's, the max abs difference of the final score maps,
and the bf16 / int8 latency of the image side (``encode``) as a ratio to fp32 in the
same run (bf16 also as the old autocast path on the fp32 weights), and the head
(``score_map`` + ``semantic``), measured in the same run as the CPU flags and the
fp32 / bf16 / int8 matmul GFLOP/s (2048^2); the issue's bf16 target is
bf16/fp32 <= 1.25 / R (R = bf16:fp32 matmul ratio). The agreement column is what
``engine.precision.MEASURED`` records (a precision under 99 % is refused for that model). Plus ADE-150 text encoding (ViLD templates,
random ViT-B/16 text tower) in both. Random weights are all that can be measured
without downloads; trained weights can agree differently.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vocabseg import speed
from vocabseg.backbones.clip import text_dim
from vocabseg.engine import inference, precision
from vocabseg.registry import all_specs, get_spec
from vocabseg.vocab import Vocabulary

FULL = ["san-vit-b16", "fcclip-convnext-l", "segclip-vit-b16", "maskclip-vit-b16", "sclip-vit-b16",
        "clearclip-vit-b16", "naclip-vit-b16"]


def best(fn, runs: int) -> tuple[float, object]:
    """Median seconds of ``runs`` calls of ``fn`` after one untimed call, and its last result."""
    out = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def matmul_gflops(dtype, size: int = 2048, runs: int = 5) -> float:
    """GFLOP/s of a size^2 matmul: fp32 / bf16 through oneDNN, "int8" as the dynamic int8
    linear ``--precision int8`` runs (activation quantised per call)."""
    if dtype == "int8":
        from vocabseg.engine import int8
        if not int8.native_int8():
            return float("nan")
        a, w = torch.randn(size, size), torch.randn(size, size)
        packed = int8._pack(w, None)
        sec, _ = best(lambda: torch.ops.quantized.linear_dynamic(a, packed, False), runs)
    else:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        sec, _ = best(lambda: torch.mm(a, b), runs)
    return 2 * size ** 3 / sec / 1e9


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 [3, h, w]: blobs of colour at several scales plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, h, w)
    for cells in (4, 16, 64):
        img += torch.nn.functional.interpolate(torch.rand(1, 3, cells, cells, generator=g), size=(h, w),
                                               mode="bilinear", align_corners=False)[0]
    img = img / 3 + 0.1 * torch.rand(3, h, w, generator=g)
    return (img.clamp(0, 1) * 255).to(torch.uint8)


@torch.no_grad()
def compare(name: str, image: torch.Tensor, runs: int) -> dict:
    torch.manual_seed(0)
    model = get_spec(name).build(clip_weights=None).eval().requires_grad_(False)
    vocab = Vocabulary.from_dataset(get_spec(name).bench_vocabulary)
    text = torch.nn.functional.normalize(torch.randn(len(vocab.prompts), text_dim(model.clip)), dim=-1)
    x = image.float() / 255
    row = {"model": name}
    for p in PRECISIONS:
        with precision.image_side(speed.use_fast_linears(model), p):     # as Segmenter, without the gate table
            row[f"enc_{p}"], feats = best(lambda: inference.encode(model, x), runs)
            row[f"head_{p}"], out = best(lambda: inference.semantic(inference.score_map(model, feats, text, vocab),
                                                                     keep_scores=True), runs)
        row[p] = out
    with torch.autocast("cpu", dtype=torch.bfloat16):       # the earlier path: autocast over fp32 weights
        row["enc_autocast"], _ = best(lambda: precision.to_fp32(inference.encode(model, x)), runs)
    l32, _, s32 = row.pop("fp32")
    row["range"] = s32.abs().max().item()
    for p in PRECISIONS[1:]:
        lp, _, sp = row.pop(p)
        row[f"agree_{p}"] = (l32 == lp).float().mean().item()
        row[f"maxdiff_{p}"] = (s32 - sp).abs().max().item()
    return row


@torch.no_grad()
def text_row(runs: int) -> dict:
    from vocabseg.backbones.clip import create_clip
    from vocabseg.text import TextEncoder
    torch.manual_seed(0)
    clip, tok, ident = create_clip("ViT-B-16", None)
    names = Vocabulary.from_dataset("ade150").prompts
    enc = TextEncoder(clip, tok, ident, "vild", cache=False)
    row = {"model": "text ADE-150 x 14 (ViT-B/16)"}
    out = {}
    for p in ("fp32", "bf16"):
        def once():
            enc._memory.clear()
            return enc(names, precision=p)
        row[f"enc_{p}"], out[p] = best(once, max(1, runs - 1))
    row["cos_min"] = (out["fp32"] * out["bf16"]).sum(-1).min().item()
    return row


PRECISIONS = ("fp32", "bf16", "int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated presets (default: every tiny one + " +
                    ", ".join(FULL) + ")")
    ap.add_argument("--size", default="512x683", help="image HxW (default 512x683)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up (median)")
    ap.add_argument("--no-text", action="store_true", help="skip the text-encoding row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tiny = sorted(n for n, s in all_specs(include_test=True).items() if s.test_only)
    models = args.models.split(",") if args.models else tiny + FULL
    h, w = (int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 flags: {', '.join(precision.cpu_flags()) or 'none'} (native bf16: {precision.native_bf16('cpu')})")
    from vocabseg.engine import int8
    print(f"int8 flags: {', '.join(int8.cpu_flags()) or 'none'} (int8 offered: {int8.native_int8()}); "
          f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    f32, b16, i8 = (matmul_gflops(d) for d in (torch.float32, torch.bfloat16, "int8"))
    print(f"matmul 2048^2: fp32 {f32:.0f} GFLOP/s, bf16 {b16:.0f} GFLOP/s (R = {b16 / f32:.2f}, bf16 target "
          f"{1.25 * f32 / b16:.2f} of fp32), int8 dynamic {i8:.0f} GFLOP/s ({i8 / f32:.2f}x fp32)")
    print(f"image {h}x{w} random texture (each model's test protocol resizes it), benchmark vocabulary, random weights")
    print("| model | argmax = fp32: bf16 | int8 | max abs diff bf16 / int8 (score range) | image side fp32 s "
          "| bf16/fp32 | autocast bf16/fp32 | int8/fp32 | head fp32 s | bf16/fp32 | int8/fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    image = texture(h, w)
    for name in models:
        try:
            r = compare(name, image, args.runs)
        except Exception as e:      # one model failing (memory, a missing file) leaves the others
            print(f"| {name} | failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        e, hd = r["enc_fp32"], r["head_fp32"]
        print(f"| {name} | {100 * r['agree_bf16']:.2f} % | {100 * r['agree_int8']:.2f} % "
              f"| {r['maxdiff_bf16']:.4f} / {r['maxdiff_int8']:.4f} ({r['range']:.2f}) | {e:.3f} "
              f"| {r['enc_bf16'] / e:.2f} | {r['enc_autocast'] / e:.2f} | {r['enc_int8'] / e:.2f} | {hd:.3f} "
              f"| {r['head_bf16'] / hd:.2f} | {r['head_int8'] / hd:.2f} |", flush=True)
    print(f"load average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    if not args.no_text:
        t = text_row(args.runs)
        print(f"\n{t['model']}: fp32 {t['enc_fp32']:.2f} s, bf16 {t['enc_bf16']:.2f} s "
              f"(bf16/fp32 {t['enc_bf16'] / t['enc_fp32']:.2f}); 1 - min cosine bf16 vs fp32 {1 - t['cos_min']:.1e}")


if __name__ == "__main__":
    main()
