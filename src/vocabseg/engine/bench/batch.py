"""Batch-inference throughput of ``vocabseg segment DIR`` (part of ``vocabseg bench``).

A folder of random images, a vocabseg checkpoint of the model with random
weights and a text cache already holding the vocabulary are written to a
temporary folder; then the command runs as a user would run it, once per
configuration (processes x threads per process, ``--batch-size``). Each process
prints how long its image loop took; a configuration's rate is all images
divided by the slowest process's loop time (model loading and start-up are
reported apart as the whole command's wall time).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINE = re.compile(r"vocabseg segment(?: \[process (\d+) of (\d+)\])?: (\d+) of (\d+) images written .* in ([0-9.]+) s")

# (label, processes, threads per process, batch size)
CONFIGS = [("1 process x 1 thread, batch 1", 1, 1, 1),
           ("1 process x 1 thread, batch 4", 1, 1, 4),
           ("2 processes x 1 thread (torchrun), batch 1", 2, 1, 1),
           ("1 process x 2 threads, batch 1", 1, 2, 1)]


def prepare(root: Path, model: str, images: int, size: int) -> tuple[Path, Path]:
    """Write ``images`` random PNGs of size x size and a random-weight checkpoint of ``model``."""
    import numpy as np
    import torch
    from PIL import Image
    from ...checkpoint import save_checkpoint
    from ...registry import get_spec
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    torch.manual_seed(0)
    ckpt = save_checkpoint(get_spec(model).build(clip_weights=None), root / "checkpoint")
    return folder, Path(ckpt)


def segment_command(folder: Path, ckpt: Path, out: Path, processes: int, batch: int, vocab: str) -> list[str]:
    args = ["-m", "vocabseg.cli", "segment", str(folder), "--model", str(ckpt), "--dataset-vocab", vocab,
            "--out", str(out), "--batch-size", str(batch)]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] + args
    return [sys.executable] + args


def run_config(folder: Path, ckpt: Path, out: Path, processes: int, threads: int, batch: int, vocab: str,
               env: dict) -> dict:
    env = {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.run(segment_command(folder, ckpt, out, processes, batch, vocab), capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - t
    found = [m.groups() for m in LINE.finditer(proc.stderr)]
    if proc.returncode != 0 or len(found) != processes:
        raise RuntimeError(f"vocabseg segment failed ({processes} x {threads}, batch {batch}):\n{proc.stderr[-3000:]}")
    images = sum(int(g[2]) for g in found)
    loop = max(float(g[4]) for g in found)
    return {"processes": processes, "threads": threads, "batch": batch, "images": images,
            "loop_s": loop, "images_per_s": images / loop, "wall_s": wall}


def bench_batch(model: str = "san-vit-b16", images: int = 8, size: int = 640, vocab: str = "ade150",
                configs=None, log=print, before=None) -> dict:
    """Images/s of ``vocabseg segment`` per configuration (see the module docstring).
    ``before()`` is called before each timed run (e.g. to wait for an idle machine)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, ckpt = prepare(root, model, images, size)
        env = {**os.environ, "VOCABSEG_HOME": str(root / "home"), "PYTHONWARNINGS": "ignore"}
        first = root / "first"
        first.mkdir()
        os.link(next(folder.iterdir()), first / "000.png")
        run_config(first, ckpt, root / "warm", 1, 2, 1, vocab, env)          # fills the text cache
        for label, processes, threads, batch in configs or CONFIGS:
            if before is not None:
                before()
            log(f"  batch: {label}")
            r = run_config(folder, ckpt, root / f"out{processes}{threads}{batch}", processes, threads, batch, vocab,
                           env)
            results.append({"label": label, **r})
    base = next((r for r in results if (r["processes"], r["threads"], r["batch"]) == (1, 1, 1)), None)
    for r in results:
        r["speedup_vs_1x1"] = r["images_per_s"] / base["images_per_s"] if base else None
    return {"model": model, "image_size": size, "vocabulary": vocab, "configs": results}
