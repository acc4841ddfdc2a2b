"""Runs the benchmark workers of ``engine.bench`` / ``engine.bench_batch`` and
formats the results as markdown tables (what ``vocabseg bench`` prints)."""
from __future__ import annotations

import os
import platform

from ...registry import get_spec
from . import measure as bench
from .batch import bench_batch


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    from .. import int8, precision
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "capability": torch.backends.cpu.get_cpu_capability(), "flags": [*precision.cpu_flags(), *int8.cpu_flags()]}


def run(models: list[str], runs: int = 5, warmup: int = 1, threads: int = 2, plain: bool = False,
        text_models: list[str] = (), batch: bool = False, batch_model: str = "san-vit-b16", batch_images: int = 8,
        wait: bool = False, precisions=(), log=print) -> dict:
    """All measurements; ``wait`` waits for an idle machine before each one."""
    def before():
        if wait:
            bench.wait_idle(0.05, log=log)
    out = {"machine": machine(), "threads": threads, "runs": runs, "warmup": warmup}
    before()
    out["busy_at_start"] = bench.cpu_busy()
    peaks = bench.run_worker("peak", threads=threads)
    out["peak"] = peaks["gflops"]
    out["peak_bf16"], out["peak_int8"] = peaks.get("gflops_bf16"), peaks.get("gflops_int8")
    out["peak_1_thread"] = bench.run_worker("peak", threads=1)["gflops"]
    out["load"] = os.getloadavg()[:3] if hasattr(os, "getloadavg") else None
    log(f"fp32 matmul peak: {out['peak']:.1f} GFLOP/s on {threads} threads, {out['peak_1_thread']:.1f} on 1")
    out["models"] = []
    for name in models:
        before()
        log(f"model {name}")
        out["models"].append(bench.run_worker("model", name=name, threads=threads, runs=runs, warmup=warmup,
                                              plain=plain, precisions=list(precisions)))
    out["text"] = []
    for name in text_models:
        for vocab in get_spec(name).text_vocabularies:
            before()
            log(f"text {name} {vocab}")
            out["text"].append(bench.run_worker("text", name=name, vocab_name=vocab, threads=threads,
                                                precisions=list(precisions)))
    if batch:
        log(f"batch inference ({batch_model}, {batch_images} images)")
        out["batch"] = bench_batch(batch_model, batch_images, log=log, before=before)
    return out


def _f(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def tables(r: dict) -> str:
    """Markdown tables of a ``run`` result."""
    peak = r["peak"]
    scale = bench.ISSUE_PEAK / peak
    lines = [f"CPU: {r['machine']['cpu']} ({r['machine']['cpus']} CPUs), torch {r['machine']['torch']}, "
             f"{r['threads']} threads, fp32. Matrix-multiply peak measured in this run: {peak:.1f} GFLOP/s "
             f"({r['peak_1_thread']:.1f} on 1 thread); the issue's host: {bench.ISSUE_PEAK:.0f}, "
             f"ratio {scale:.2f}. Latency: median of {r['runs']} runs after {r['warmup']} warm-up.", ""]
    m0 = r["machine"]
    if "capability" in m0:
        lines[0] += f" CPU capability {m0['capability']}, flags: {', '.join(m0['flags']) or 'none'}."
    if r.get("load"):
        lines[0] += " Load average at the start: " + " ".join(f"{v:.1f}" for v in r["load"]) + "."
    lows = [p for p in ("bf16", "int8", "onnx") if any(p in m for m in r["models"])]
    if lows:
        pk = [f"fp32 {peak:.0f}"] + [f"{p} {r[f'peak_{p}']:.0f}" for p in ("bf16", "int8") if r.get(f"peak_{p}")]
        lines += [f"Matmul peaks in this run (GFLOP/s): {', '.join(pk)}"
                  + (f"; R = bf16 / fp32 = {r['peak_bf16'] / peak:.2f}, bf16 target = 1.25 / R = "
                     f"{1.25 * peak / r['peak_bf16']:.2f} of fp32" if r.get("peak_bf16") else "") + ".", ""]
    if r["models"]:
        plain = any("plain" in m for m in r["models"])
        lines += ["| model | input | latency (s) | encode + classify (s) | GFLOP | GFLOP/s | of peak | peak RSS (GB) |"
                  + (" plain path (s) |" if plain else "") + " issue: published → target (s) | target × peak ratio (s) |",
                  "|---|---|---|---|---|---|---|---|" + ("---|" if plain else "") + "---|---|"]
        for m in r["models"]:
            f = m["fast"]
            gflop = f["gflop_encode"] + f["gflop_classify"]
            rate = gflop / f["latency"]
            pub, target = bench.TARGETS.get(m["model"], (None, None))
            row = (f"| `{m['model']}` | {m['size'][0]}×{m['size'][1]} | **{f['latency']:.2f}** | "
                   f"{f['encode']:.2f} + {f['classify']:.2f} | {gflop:.0f} | {rate:.0f} | {rate / peak:.0%} | "
                   f"{m['peak_rss_mb'] / 1024:.1f} |")
            if plain:
                row += f" {_f(m.get('plain', {}).get('latency'))} |"
            row += (f" {_f(pub)} → {_f(target)} | {_f(target * scale if target else None)} |")
            lines.append(row)
        lines.append("")
    if lows:
        head = " | ".join(f"{p} / fp32" for p in lows)
        lines += [f"| model | fp32 latency (s) | {head} |" + (" of bf16 peak |" if "bf16" in lows else ""),
                  "|---|---|" + "---|" * len(lows) + ("---|" if "bf16" in lows else "")]
        for m in r["models"]:
            f = m["fast"]
            row = f"| `{m['model']}` | {f['latency']:.2f} | " + " | ".join(
                _f(m[p]["latency"] / f["latency"]) if p in m else "—" for p in lows) + " |"
            if "bf16" in lows:
                rate = (f["gflop_encode"] + f["gflop_classify"]) / m["bf16"]["latency"] if "bf16" in m else None
                row += f" {rate / r['peak_bf16']:.0%} |" if rate and r.get("peak_bf16") else " — |"
            lines.append(row)
        lines.append("")
    if r.get("text"):
        low = any("uncached_bf16" in t for t in r["text"])
        lines += ["| text tower | vocabulary (ViLD templates) | prompts | uncached (s) | prompts/s | cached (s) | "
                  "identity hash, once per load (s) | issue target uncached / cached (s) | uncached target × peak ratio (s) |"
                  + (" bf16 uncached / fp32 | 1 − min cosine bf16 vs fp32 |" if low else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if low else "")]
        for t in r["text"]:
            target = bench.TEXT_TARGET.get(t["model"]) if t["vocabulary"].startswith("ade150") else None
            row = (f"| `{t['model']}` | {t['vocabulary']} ({t['synonyms']} names) | {t['prompts']} | "
                   f"**{t['uncached']:.1f}** | {t['prompts_per_s']:.0f} | **{t['cached']:.3f}** | "
                   f"{t['identity']:.2f} | {_f(target[0], 0) + ' / ' + _f(target[1], 1) if target else '—'} | "
                   f"{_f(target[0] * scale, 0) if target else '—'} |")
            if low:
                row += (f" {t['uncached_bf16'] / t['uncached']:.2f} | {1 - t['cos_min_bf16']:.1e} |"
                        if "uncached_bf16" in t else " — | — |")
            lines.append(row)
        lines.append("")
    b = r.get("batch")
    if b:
        lines += [f"`vocabseg segment DIR` with `{b['model']}` (random weights), {b['configs'][0]['images']} images of "
                  f"{b['image_size']}×{b['image_size']}, vocabulary {b['vocabulary']} (text cached):", "",
                  "| configuration | images/s | vs 1 process × 1 thread | slowest image loop (s) | whole command (s) |",
                  "|---|---|---|---|---|"]
        for c in b["configs"]:
            lines.append(f"| {c['label']} | **{c['images_per_s']:.3f}** | {_f(c['speedup_vs_1x1'])}× | "
                         f"{c['loop_s']:.1f} | {c['wall_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)
