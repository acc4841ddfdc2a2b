"""Gradient accumulation (``train.accumulate``) gives the update of the large batch, in one
process and under DistributedDataParallel (2 processes, a fresh torchrun subprocess), also for
SAN's and FC-CLIP's losses normalised by the step's number of target masks;
activation checkpointing leaves SAN's losses and gradients unchanged; unseen classes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vocabseg.engine.training.config import validate
from vocabseg.engine.training.train import seen_unseen, seen_vocabulary, train
from vocabseg.testing.owndata import write_folder
from vocabseg.testing.pixelmodel import PixelClassifier
from vocabseg.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data, out, accumulate, batch=8, iterations=3):
    return validate({"model": {"preset": "pixel-classifier-test"},
                     "data": {"train": f"folder:{data}", "workers": 0},
                     "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "clip_grad_norm": 10.0},
                     "schedule": {"iterations": iterations},
                     "train": {"batch_size": batch, "accumulate": accumulate, "log_every": 1, "checkpoint_every": 0,
                               "output_dir": str(out)}})


def _run(cfg):
    torch.manual_seed(0)
    return train(cfg, progress=False, model=PixelClassifier())


def test_accumulation_equals_the_large_batch(tmp_path):
    write_folder(tmp_path / "d", num_images=16, size=(24, 32))
    big = _run(_cfg(tmp_path / "d", tmp_path / "a", 1))
    for parts in (2, 8):
        small = _run(_cfg(tmp_path / "d", tmp_path / f"b{parts}", parts))
        a, b = big["model"].state_dict(), small["model"].state_dict()
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a), parts
        assert small["last_loss"] == pytest.approx(big["last_loss"], rel=1e-5)
    moved = max((big["model"].state_dict()[k] - PixelClassifier().state_dict()[k]).abs().max() for k in a)
    assert moved > 1e-2                                            # the weights did change
    with pytest.raises(ValueError, match="gives each of the 1 processes 8 images, which train.accumulate 3"):
        _run(_cfg(tmp_path / "d", tmp_path / "c", 3))


SCRIPT = """
import sys, torch
from vocabseg.engine.training.config import validate
from vocabseg.engine.training.train import train
from vocabseg.engine import distributed as D
from vocabseg.testing.pixelmodel import PixelClassifier
data, out, acc = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = validate({"model": {"preset": "pixel-classifier-test"}, "data": {"train": "folder:" + data, "workers": 0},
                "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "clip_grad_norm": 10.0},
                "schedule": {"iterations": 3},
                "train": {"batch_size": 8, "accumulate": acc, "log_every": 1, "checkpoint_every": 0,
                          "output_dir": out}})
torch.manual_seed(0)
r = train(cfg, progress=False, model=PixelClassifier(), device="cpu")
if D.is_main():
    torch.save(r["model"].state_dict(), out + "/weights.pt")
D.cleanup()
"""


@pytest.mark.slow
@pytest.mark.dist
def test_accumulation_under_ddp_equals_the_large_batch(tmp_path):
    write_folder(tmp_path / "d", num_images=16, size=(24, 32))
    big = _run(_cfg(tmp_path / "d", tmp_path / "a", 1))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    out = tmp_path / "ddp"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "d"), str(out), "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out / "weights.pt", weights_only=True)
    want = big["model"].state_dict()
    assert all(torch.allclose(want[k], got[k], atol=1e-6, rtol=1e-5) for k in want)


def test_activation_checkpointing_keeps_san_losses_and_gradients():
    from vocabseg.registry import get_spec
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().train()
    g = torch.Generator().manual_seed(1)
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=g),
              "sem_seg": torch.randint(0, 3, (64, 64), generator=g)} for _ in range(2)]
    vocab = Vocabulary.parse("cat; dog; sky")
    results = []
    for on in (False, True):
        model.set_activation_checkpointing(on)
        model.zero_grad()
        torch.manual_seed(5)                         # the point sampling draws the same points
        losses = model.forward_train(batch, vocab)
        sum(losses.values()).backward()
        results.append((sum(losses.values()).item(),
                        model.clip.visual.positional_embedding.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1].abs().max() > 0 and torch.allclose(results[0][1], results[1][1], atol=1e-6)
    with pytest.raises(ValueError, match="FCCLIP has no activation checkpointing"):
        get_spec("fcclip-tiny").build().set_activation_checkpointing(True)


def test_unseen_class_protocol_helpers():
    vocab = Vocabulary(tuple((n,) for n in ("background", "grass", "sky", "box")), background=0)
    seen = seen_vocabulary(vocab, ["Sky", 3])
    assert seen.names == ["background", "grass"] and seen.background == 0
    assert seen_vocabulary(vocab, ["background"]).background is None
    with pytest.raises(ValueError, match="'cloud' is not a class"):
        seen_vocabulary(vocab, ["cloud"])
    r = seen_unseen({"grass": 80.0, "sky": 40.0, "box": 20.0, "cone": None}, ["sky", "box"])
    assert r == {"miou_seen": 80.0, "miou_unseen": 30.0, "miou_harmonic": pytest.approx(2 * 80 * 30 / 110)}


def test_training_sources_need_labels_and_same_needs_own_data(tmp_path):
    from vocabseg.engine.training.train import eval_datasets
    write_folder(tmp_path / "d", num_images=4, val=2)
    cfg = _cfg(tmp_path / "d", tmp_path / "a", 1, batch=2)
    cfg["eval"]["datasets"] = ["same"]
    sets = eval_datasets(cfg)
    assert list(sets) == ["folder-d"] and len(sets["folder-d"]) == 2 and sets["folder-d"].split == "val"
    write_folder(tmp_path / "nosplit", num_images=2)
    cfg2 = _cfg(tmp_path / "nosplit", tmp_path / "a", 1, batch=2)
    cfg2["eval"]["datasets"] = ["same"]
    with pytest.warns(UserWarning, match="split val holds the training images too"):
        eval_datasets(cfg2)
    cfg["data"]["train"] = {"dataset": "voc20", "split": "train"}
    with pytest.raises(ValueError, match="'same' evaluates the training sources given as folder:PATH"):
        eval_datasets(cfg)
    (tmp_path / "d" / "labels").rename(tmp_path / "gone")
    with pytest.raises(ValueError, match="has no labels/ folder: nothing to train on"):
        _run(_cfg(tmp_path / "d", tmp_path / "b", 1, batch=2))


# --- Mask2Former-style criteria (SAN, FC-CLIP): losses normalised by the number of target masks ---
_RAND = torch.rand


def _same_points(*size, generator=None, device=None, dtype=None, **kw):
    """``torch.rand`` for the point sampling: every row of a [..., P, 2] draw is the same P points
    (a fixed function of P). The matcher draws points per image and the mask losses per matched
    mask from the global RNG, so a batch and its micro-batches would draw different points; with
    this, every image and mask gets the same points however the batch is split, and the mask
    losses are compared, not the draws."""
    size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    pts = _RAND(size[-2:], generator=torch.Generator().manual_seed(size[-2]))
    return pts.expand(size).clone().to(device or "cpu")


def _mask_items(n=4, size=32):
    """Images with 1..4 classes each (and an ignored corner), so micro-batches hold different
    numbers of target masks."""
    g = torch.Generator().manual_seed(3)
    items = []
    for i in range(n):
        sem = torch.zeros(size, size, dtype=torch.long)
        for c in range(1, 1 + i % 4):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            sem[y:y + size // 3, x:x + size // 3] = c
        sem[:6, :6] = 255
        items.append({"image": torch.rand(3, size, size, generator=g), "sem_seg": sem})
    return items


def _one_step(model, start, items, vocab, parts):
    from vocabseg.engine.training.train import TrainStep, accumulate_gradients
    model.load_state_dict(start)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    opt.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = accumulate_gradients(TrainStep(model), items, vocab, parts, scaler, "cpu", "fp32", 1)
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    opt.step()
    return float(sum(losses.values())), {k: v.detach().clone() for k, v in model.state_dict().items()}, grads


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["san-tiny", "fcclip-tiny"])
def test_accumulation_of_mask_losses_equals_the_large_batch(preset, monkeypatch):
    from vocabseg.registry import get_spec
    monkeypatch.setattr(torch, "rand", _same_points)
    torch.manual_seed(0)
    model = get_spec(preset).build().train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    items, vocab = _mask_items(), Vocabulary.parse("ground; red; green; blue")
    loss1, p1, g1 = _one_step(model, start, items, vocab, 1)
    assert max((p1[k] - start[k]).abs().max() for k in start) > 1e-4 and len(g1) > 10

    def gap(g):                # the largest gradient difference relative to the gradient's size
        return max(((g[n] - g1[n]).abs().max() / g1[n].abs().max().clamp(min=1e-12)).item() for n in g1)
    for parts in (2, 4):
        loss, p, g = _one_step(model, start, items, vocab, parts)
        assert loss == pytest.approx(loss1, rel=1e-6), parts
        assert all(torch.allclose(p[k], p1[k], rtol=1e-6, atol=1e-6) for k in start), parts
        assert gap(g) < 1e-5, parts
    # per-micro-batch normalisers (the model not reporting its totals) give another update
    monkeypatch.setattr(model, "loss_totals", lambda batch: {})
    loss, p, g = _one_step(model, start, items, vocab, 2)
    assert abs(loss - loss1) > 1e-4 * abs(loss1) and gap(g) > 1e-3


def test_criterion_totals_reproduce_its_own_normalisers():
    from vocabseg.losses.criterion import mask_criterion
    crit = mask_criterion(train_points=64)
    g = torch.Generator().manual_seed(0)
    q, k = 3, 5
    outputs = {"pred_logits": torch.randn(2, q, k + 1, generator=g), "pred_masks": torch.randn(2, q, 8, 8, generator=g)}
    counts = [2, 4]                                     # the second image has more masks than queries
    targets = [{"labels": torch.arange(n) % k, "masks": torch.rand(n, 16, 16, generator=g) > 0.5} for n in counts]
    totals = crit.totals(counts, q)
    assert totals == {"masks": 6.0, "ce_weight": pytest.approx(2 + 0.1 * 1 + 3)}
    torch.manual_seed(1)
    plain = crit(outputs, targets)
    torch.manual_seed(1)
    normed = crit(outputs, targets, {**totals, "share": 1.0})
    assert all(torch.allclose(plain[n], normed[n], rtol=1e-6) for n in plain)
    torch.manual_seed(1)
    half = crit(outputs, targets, {**totals, "share": 0.5})
    assert all(torch.allclose(plain[n], half[n] / 2, rtol=1e-6) for n in plain)


MASK_SCRIPT = """
import sys, torch, torch.nn as nn
sys.path.insert(0, sys.argv[2])
import test_engine_accumulate as T
from vocabseg.engine import distributed as D
from vocabseg.engine.training.train import TrainStep, accumulate_gradients
from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary
D.init("cpu")
torch.manual_seed(0)
model = get_spec("san-tiny").build().train()
torch.rand = T._same_points
items, vocab, r = T._mask_items(), Vocabulary.parse("ground; red; green; blue"), D.rank()
step = nn.parallel.DistributedDataParallel(TrainStep(model), find_unused_parameters=True)
accumulate_gradients(step, items[2 * r:2 * r + 2], vocab, 2, torch.amp.GradScaler("cpu", enabled=False), "cpu",
                     "fp32", 1)
if r == 0:
    torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, sys.argv[1])
D.cleanup()
"""


@pytest.mark.slow
@pytest.mark.dist
def test_accumulation_of_mask_losses_under_ddp_equals_the_large_batch(tmp_path, monkeypatch):
    """2 processes x 2 micro-batches of one image: the target masks counted over both processes."""
    from vocabseg.engine.training.train import TrainStep, accumulate_gradients
    from vocabseg.registry import get_spec
    script = tmp_path / "run.py"
    script.write_text(MASK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "grads.pt"), str(ROOT / "tests")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "grads.pt", weights_only=True)
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().train()
    monkeypatch.setattr(torch, "rand", _same_points)
    accumulate_gradients(TrainStep(model), _mask_items(), Vocabulary.parse("ground; red; green; blue"), 1,
                         torch.amp.GradScaler("cpu", enabled=False), "cpu", "fp32", 1)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and len(want) > 10
    assert max(((got[n] - want[n]).abs().max() / want[n].abs().max()).item() for n in want) < 1e-5
