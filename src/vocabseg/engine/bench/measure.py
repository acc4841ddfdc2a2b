"""Speed benchmark (``vocabseg bench``, ``benchmarks/speed.py``).

Measured with random weights (speed does not depend on their values), fp32, on
the threads given (default 2):

* ``peak``: the fp32 matrix-multiply rate of this machine (2048^2 ``torch.mm``), and
  in the same process the bf16 rate (on a CPU with native bf16) and the dynamic-int8
  rate ``--precision int8`` runs (on a CPU with VNNI / AMX).
* ``model``: per zoo preset at its published test resolution (a square image of
  the protocol's short side: SAN 640, FC-CLIP 800, SegCLIP one 224 window, ...),
  the whole test-time pipeline ``engine.inference.infer`` (resize, normalise,
  pad, ``encode_image``, classification to per-class scores at the input size)
  with the ADE-150 text embeddings given (text encoding is timed apart): median
  latency over ``runs`` after ``warmup`` calls; FLOPs of one call counted by
  ``torch.utils.flop_counter`` with ``nn.MultiheadAttention``'s fused fast path
  switched off (so its projections run as counted linear layers), CPU flash
  attention counted like the other attention kernels (4 * B * h * Lq * Lk * d)
  and oneDNN linear layers as 2 * rows * in * out (gathers, resizes and other
  element-wise work are not counted);
  achieved GFLOP/s = FLOPs / latency; peak memory = the worker process's
  ``ru_maxrss`` (the most resident memory it held: interpreter, weights,
  activations). ``plain`` also times the straightforward path
  (``speed.plain_paths()``); ``precisions`` (bf16, int8: where this CPU runs them
  natively; onnx: the image side exported and run by ONNX Runtime) time the same
  pipeline at those precisions in the same process, so their ratios to fp32 hold
  even on a loaded machine.
* ``text``: a model's text tower encoding a benchmark vocabulary with its
  templates into an empty cache (uncached), then a fresh encoder reading that
  cache (cached, median of 5); the text identity hash a model computes once
  per load is timed apart.
* batch images/s of ``vocabseg segment DIR`` (see ``bench_batch``).

Each measurement runs in its own process (``python -m vocabseg.engine.bench
WORKER JSON``) so that memory and thread settings do not leak between them.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ...errors import UserError

ISSUE_PEAK = 135.0       # GFLOP/s, fp32 matmul on 2 threads of the host the issue's numbers come from
# issue 8: published code and target on that host (seconds)
TARGETS = {"san-vit-b16": (2.15, 1.1), "fcclip-convnext-l": (17.7, 10.5), "segclip-vit-b16": (2.4, 0.4)}
TEXT_TARGET = {"fcclip-convnext-l": (60.0, 0.1)}     # uncached, cached (seconds), ADE-150 with synonyms


# --- helpers -----------------------------------------------------------------
def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; 0 when unavailable)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    try:
        a = snap()
        time.sleep(seconds)
        b = snap()
    except OSError:
        return 0.0
    return 1.0 - (b[1] - a[1]) / max(1, b[0] - a[0])


def wait_idle(limit: float, max_wait: float = 1800.0, log=print) -> float:
    """Wait (up to ``max_wait`` s) until the machine is < 5 % busy; returns the last reading."""
    start, busy = time.time(), cpu_busy()
    while busy > limit and time.time() - start < max_wait:
        log(f"  machine {busy:.0%} busy; waiting")
        time.sleep(10)
        busy = cpu_busy()
    return busy


def _run_times(fn, runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
    aten = torch.ops.aten

    def cpu_flash(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def onednn_linear(x, w, *args, out_shape=None, **kwargs):      # speed.linear's kernel
        rows = 1
        for n in x[:-1]:
            rows *= n
        return 2 * rows * w[0] * w[1]
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    if hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = onednn_linear
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_vocabulary(name: str):
    """The vocabulary preset ``name``'s speed benchmark uses (its spec's)."""
    from ...registry import get_spec
    from ...vocab import Vocabulary
    return Vocabulary.from_dataset(get_spec(name).bench_vocabulary)


# --- workers (run in their own process) -------------------------------------------
def work_peak(threads: int, size: int = 2048, runs: int = 5) -> dict:
    """fp32, bf16 and (on a CPU with VNNI / AMX) dynamic-int8 matmul GFLOP/s, in one process."""
    from .. import int8, precision
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    rate = lambda fn: 2 * size ** 3 / statistics.median(_run_times(fn, runs, 2)) / 1e9   # noqa: E731
    out = {"threads": threads, "gflops": rate(lambda: torch.mm(a, b))}
    if precision.native_bf16("cpu"):
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["gflops_bf16"] = rate(lambda: torch.mm(a16, b16))
    if int8.native_int8():
        packed = int8._pack(b, None)
        out["gflops_int8"] = rate(lambda: torch.ops.quantized.linear_dynamic(a, packed, False))
    return out


def _onnx_model(model, image, folder: str):
    """``model`` with its image side exported to ONNX in ``folder`` and run by ONNX Runtime."""
    from ...export import export, load_export
    from .. import inference
    windows = sorted(set(inference.encode(model, image).padded))
    export(model, folder, sizes=windows)
    return load_export(folder)


def _precisions(wanted) -> list[str]:
    """The low precisions of ``wanted`` this CPU runs natively (bf16 / int8) or that it can run (onnx)."""
    from .. import int8, precision
    ok = {"bf16": precision.native_bf16("cpu"), "int8": int8.native_int8(), "onnx": True}
    return [p for p in wanted if ok.get(p)]


@torch.no_grad()
def work_model(name: str, threads: int, runs: int, warmup: int, plain: bool, precisions=()) -> dict:
    from ... import speed
    from ...backbones.clip import text_dim
    from ...registry import get_spec
    from .. import inference
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_spec(name).build(clip_weights=None).eval().requires_grad_(False)   # (the FLOP counter's module
    vocab = bench_vocabulary(name)                                                   # hooks need no autograd)
    text = torch.nn.functional.normalize(torch.randn(len(vocab.prompts), text_dim(model.clip)), dim=-1)
    p = model.protocol
    image = torch.rand(3, p.short_side, p.short_side, generator=torch.Generator().manual_seed(0))
    out = {"model": name, "size": [p.short_side, p.short_side], "vocabulary": f"{len(vocab)} classes, "
           f"{len(vocab.prompts)} synonyms", "threads": threads,
           "params_m": sum(t.numel() for t in model.parameters()) / 1e6}
    from .. import precision

    def timed(m):
        enc, cls = [], []

        def once():
            t = time.perf_counter()
            feats = inference.encode(m, image)
            t1 = time.perf_counter()
            inference.scores(m, feats, text, vocab)
            enc.append(t1 - t)
            cls.append(time.perf_counter() - t1)
        _run_times(once, runs, warmup)
        enc, cls = enc[warmup:], cls[warmup:]
        total = [a + b for a, b in zip(enc, cls)]
        return {"latency": statistics.median(total), "encode": statistics.median(enc),
                "classify": statistics.median(cls), "runs": [round(t, 3) for t in total]}

    speed.use_fast_linears(model)
    for label, ctx in (("fast", contextlib.nullcontext), ("plain", speed.plain_paths)):
        if label == "plain" and not plain:
            continue
        with ctx():
            out[label] = timed(model)
            feats = inference.encode(model, image)
            out[label]["gflop_encode"] = count_flops(lambda: inference.encode(model, image)) / 1e9
            out[label]["gflop_classify"] = count_flops(lambda: inference.scores(model, feats, text, vocab)) / 1e9
    for p in _precisions(precisions):        # the same fast paths at another precision, in this process
        if p == "onnx":
            with tempfile.TemporaryDirectory() as folder:
                try:
                    onnx_model = _onnx_model(model, image, folder)
                except UserError as e:          # not exportable (said in one line): the other columns stay
                    out["onnx_error"] = str(e)
                    continue
                out[p] = timed(onnx_model)
        else:
            with precision.image_side(model, p):
                out[p] = timed(model)
    out["peak_rss_mb"] = _peak_mb()
    return out


@torch.no_grad()
def work_text(name: str, vocab_name: str, threads: int, templates: str = "vild", precisions=()) -> dict:
    from ...registry import get_spec
    from ...text import TextEncoder
    from ...vocab import Vocabulary
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_spec(name).build(clip_weights=None).eval()
    vocab = Vocabulary.from_dataset(vocab_name)
    t = time.perf_counter()
    clip, tokenizer, ident = model.text_tower()
    identity = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as home:
        os.environ["VOCABSEG_HOME"] = home
        enc = TextEncoder(clip, tokenizer, ident, templates, average=model.text_average)
        t = time.perf_counter()
        enc(vocab)
        uncached = time.perf_counter() - t
        cached = _run_times(lambda: TextEncoder(clip, tokenizer, ident, templates,
                                                  average=model.text_average)(vocab), runs=5, warmup=0)
        low = {}
        if "bf16" in _precisions(precisions):       # uncached at bf16 (its own cache entry), same process
            t = time.perf_counter()
            emb = enc(vocab, precision="bf16")
            low = {"uncached_bf16": time.perf_counter() - t,
                   "cos_min_bf16": (emb * enc(vocab)).sum(-1).min().item()}
    prompts = len(vocab.prompts) * len(enc.templates)
    return {"model": name, "vocabulary": vocab_name, "synonyms": len(vocab.prompts), "prompts": prompts,
            "templates": templates, "uncached": uncached, "prompts_per_s": prompts / uncached,
            "cached": statistics.median(cached), "identity": identity, "threads": threads, **low}


WORKERS = {"peak": work_peak, "model": work_model, "text": work_text}


def run_worker(kind: str, timeout: float = 7200, env: dict | None = None, **kwargs) -> dict:
    """Run one worker in a fresh Python process and return its JSON result."""
    cmd = [sys.executable, "-m", "vocabseg.engine.bench.measure", kind, json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} {kwargs} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, kwargs = argv[0], json.loads(argv[1])
    result = WORKERS[kind](**kwargs)
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
