"""`vocabseg train` under torchrun with 2 processes (gloo, DistributedDataParallel):
a run stopped by SIGTERM and resumed reproduces the uninterrupted run's loss
sequence and final weights exactly."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vocabseg.testing.synthetic import write_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(config, out, *extra, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vocabseg.cli", "train", str(config), "--output", str(out), "--no-progress", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return proc


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in x]


@pytest.mark.dist
def test_two_process_training_stopped_and_resumed_equals_uninterrupted(tmp_path):
    write_benchmark("coco-stuff", tmp_path / "data", split="train", num_images=16, size=(64, 64))
    config = tmp_path / "san.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"preset": "san-tiny"},
        "data": {"train": {"dataset": "coco-stuff", "split": "train"}, "root": str(tmp_path / "data"),
                 "workers": 1, "transform": {"crop_size": 64, "short_sizes": [64, 80], "max_size": 256}},
        "optim": {"lr": 1e-3, "weight_decay": 1e-4, "clip_grad_norm": 0.01},
        "schedule": {"name": "poly", "iterations": 6},          # 4 iterations per epoch at batch 4
        "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 100}}))
    _torchrun(config, tmp_path / "full")
    full = _losses(tmp_path / "full")
    assert len(full) == 6

    part = tmp_path / "part"
    proc = _torchrun(config, part, wait=False)
    deadline = time.time() + 240
    log = part / "metrics.jsonl"
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.05)                                        # one complete line: iteration 1 is done
    proc.send_signal(signal.SIGTERM)                            # as a cluster pre-empting the job would
    _, err = proc.communicate(timeout=120)
    assert (part / "checkpoints" / "last").is_file(), f"no checkpoint after SIGTERM (exit {proc.returncode}):\n{err[-3000:]}"
    stopped = int((part / "checkpoints" / "last").read_text().strip()[5:13])
    assert 1 <= stopped < 6 and len(_losses(part)) == stopped   # saved at the iteration it stopped
    assert not (part / "model").exists()
    _torchrun(config, part, "--resume")
    assert _losses(part) == full
    a, b = load_file(tmp_path / "full" / "model" / "model.safetensors"), load_file(part / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
