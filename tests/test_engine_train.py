"""The training engine: config schema, schedules, parameter groups, clipping, data
order, seeded augmentation, AMP, and an exact resume (in one process)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from vocabseg.cli import main as cli_main
from vocabseg.data.captions import shape_sample, write_shards
from vocabseg.testing.synthetic import write_benchmark
from vocabseg.engine.training.config import ConfigError, apply_overrides, load_config, parse_value, validate
from vocabseg.engine.training.optim import clip_gradients, param_groups
from vocabseg.model import default_param_groups
from vocabseg.engine.training.schedule import Schedule
from vocabseg.engine.training.train import train
from vocabseg.engine.training.data import EpochBatches, SeededTransform

BASE = {"model": {"preset": "segclip-tiny"}, "data": {"train": {"dataset": "voc20"}},
        "optim": {"lr": 1e-3}, "schedule": {"iterations": 10}, "train": {"batch_size": 4}}


def test_config_defaults_overrides_and_errors(tmp_path):
    cfg = validate(apply_overrides(BASE, ["optim.lr=1e-4", "train.precision=bf16", "data.crop_size=64",
                                          "schedule.milestones=[3, 6]", "optim.betas=[0.9, 0.98]"]))
    assert cfg["optim"]["lr"] == 1e-4 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["train"]["precision"] == "bf16" and cfg["data"]["crop_size"] == 64     # model keys pass through
    assert cfg["schedule"]["milestones"] == [3, 6] and cfg["train"]["seed"] == 0 and cfg["data"]["workers"] == 2
    assert parse_value("2.5e-3") == 2.5e-3 and parse_value("null") is None and parse_value("abc") == "abc"
    bad = [({"train": {"batch_size": 4, "batchsize": 8}}, "unknown key(s) train.batchsize; train takes batch_size"),
           ({"extra": {}}, "unknown config section(s) extra"),
           ({"model": {}}, "model.preset is required"),
           ({"train": {"batch_size": 4, "precision": "fp8"}}, "train.precision must be one of fp32, fp16, bf16"),
           ({"optim": {"lr": "fast"}}, "optim.lr must be int or float, got 'fast'"),
           ({"schedule": {"iterations": 5, "epochs": 2}}, "exactly one of schedule.iterations and schedule.epochs"),
           ({"schedule": {"iterations": 5, "name": "multistep"}}, "schedule.milestones"),
           ({"train": {"batch_size": 4, "tensorboard": 1}}, "train.tensorboard must be bool"),
           ({"data": {"train": {"path": "x"}}}, "needs 'dataset' (a benchmark) or 'type'")]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate({**BASE, **change})
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(BASE, ["optim.lr"])
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: segclip-tiny}\ndata: {train: {dataset: voc20}}\noptim: {lr: 1e-3}\n"
                    "schedule: {iterations: 3}\ntrain: {batch_size: 2, output_dir: x, colour: red}\n")
    assert cli_main(["train", str(path)]) == 2                   # one line, no traceback
    assert cli_main(["train", str(path), "optim.lr"]) == 2
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    cfg = validate({**BASE, "eval": {"datasets": ["voc20"], "root": str(tmp_path / "none")}})
    with pytest.raises(FileNotFoundError, match="vocabseg prepare voc"):    # before any training
        train(cfg, output_dir=tmp_path / "run", progress=False)


def test_schedules_follow_their_formulas():
    T = 100
    poly = Schedule("poly", T, power=0.9)
    assert [poly.factor(i) for i in (0, 50, 99)] == pytest.approx([1.0, 0.5 ** 0.9, 0.01 ** 0.9])
    ms = Schedule("multistep", T, milestones=[60, 80], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert ms.factor(0) == pytest.approx(0.001) and ms.factor(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [ms.factor(i) for i in (10, 59, 60, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    wc = Schedule("warmup_cosine", T, warmup_fraction=0.15)
    for i in range(T):        # SegCLIP's AdamW: x = step / t_total with step counted from 1
        x = (i + 1) / T
        want = x / 0.15 if x < 0.15 else 0.5 * (1 + math.cos(math.pi * (x - 0.15) / 0.85))
        assert wc.factor(i) == pytest.approx(want)
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 4e-3},
                           {"params": [nn.Parameter(torch.zeros(1))], "lr": 4e-6}], lr=1.0)
    poly.apply(opt, 50)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-3 * 0.5 ** 0.9, 4e-6 * 0.5 ** 0.9])
    poly.apply(opt, 0)                                          # from the base rate, not compounded
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-3, 4e-6])


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.pos_embed = nn.Parameter(torch.zeros(3, 4))
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_parameter_groups_decay_freeze_and_fill():
    net = _Net()
    cfg = {"optim": {"lr": 0.1, "weight_decay": 0.05, "freeze": ["head."]}}
    groups = param_groups(net, cfg)
    names = {id(p): n for n, p in net.named_parameters()}
    by = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by == {"body.weight": (0.1, 0.05), "body.bias": (0.1, 0.05), "embed.weight": (0.1, 0.0),
                  "pos_embed": (0.1, 0.0), "norm.weight": (0.1, 0.0), "norm.bias": (0.1, 0.0)}
    assert not net.head.weight.requires_grad
    with pytest.raises(ValueError, match=r"optim.freeze prefixes \['nothing.'\] match no parameter"):
        param_groups(_Net(), {"optim": {"lr": 0.1, "weight_decay": 0.0, "freeze": ["nothing."]}})
    assert len(default_param_groups(_Net(), cfg)) == 2
    # a model's own groups: lr / weight decay filled in where it leaves them out, frozen dropped
    from vocabseg.registry import get_spec
    san = get_spec("san-tiny").build()
    groups = param_groups(san, {"optim": {"lr": 1e-4, "weight_decay": 1e-4}})
    assert all(g["lr"] == 1e-4 for g in groups)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    assert trainable == sum(p.numel() for p in san.parameters() if p.requires_grad) > 0


def test_gradient_clipping_full_model_norm_and_value():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(4))]
    grads = [torch.tensor([3.0, 0, 0]), torch.tensor([0, 4.0, 0, 0])]
    opt = torch.optim.SGD(params, lr=1)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    assert clip_gradients(opt, 1.0, "full_model") == pytest.approx(5.0)
    assert torch.allclose(params[0].grad, grads[0] / 5, atol=1e-6) and torch.allclose(params[1].grad, grads[1] / 5, atol=1e-6)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_gradients(opt, 1.0, "norm")                           # each parameter on its own
    assert params[0].grad.norm() == pytest.approx(1.0) and params[1].grad.norm() == pytest.approx(1.0)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_gradients(opt, 2.0, "value")
    assert params[0].grad.tolist() == [2.0, 0, 0] and params[1].grad.tolist() == [0, 2.0, 0, 0]


def test_batch_order_is_shared_by_any_number_of_processes():
    one = list(EpochBatches(50, 8, 0, 1, seed=3, epoch=1))
    two = [list(EpochBatches(50, 8, r, 2, seed=3, epoch=1)) for r in range(2)]
    assert len(one) == 6 and all(len(b) == 8 for b in one)          # 50 // 8 batches, remainder dropped
    for k, batch in enumerate(one):
        assert two[0][k] + two[1][k] == batch                        # rank slices of the same global batch
    assert list(EpochBatches(50, 8, 0, 1, seed=3, epoch=1, start=4)) == one[4:]
    assert list(EpochBatches(50, 8, 0, 1, seed=3, epoch=2)) != one
    flat = [i for b in one for _, i in b]
    assert len(set(flat)) == 48 and all(e == 1 for b in one for e, _ in b)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        EpochBatches(50, 8, 0, 3, seed=0, epoch=0)


def test_seeded_transform_is_independent_of_order_and_keeps_global_rng():
    base = [{"image": torch.zeros(3, 4, 4), "sem_seg": torch.zeros(4, 4, dtype=torch.long)} for _ in range(5)]

    def jitter(item):
        return dict(item, r=(torch.rand(1).item(), float(np.random.rand())))

    ds = SeededTransform(base, jitter, seed=7, ignore_index=255)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = [ds[(0, i)]["r"] for i in range(5)]
    assert torch.equal(torch.get_rng_state(), before)            # global state untouched
    b = [ds[(0, i)]["r"] for i in reversed(range(5))][::-1]
    assert a == b and len(set(a)) == 5
    assert ds[(1, 0)]["r"] != a[0] and ds[(0, 0)]["ignore_index"] == 255
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(0, i) for i in range(5)]], num_workers=2,
                                         collate_fn=list)
    assert [it["r"] for batch in loader for it in batch] == a    # the same in loader workers


def _caption_config(root, out, iterations=6, **train):
    rng = np.random.default_rng(0)
    write_shards(root / "shards", [shape_sample(rng, 64)[:2] for _ in range(12)], per_shard=6)
    cfg = {"model": {"preset": "segclip-tiny"},
           "data": {"train": [{"type": "webdataset", "path": str(root / "shards")}], "workers": 2,
                    "transform": {"size": 64, "scale": [0.6, 1.0], "sp_short_side": 64, "sp_scale": 64,
                                  "sp_sigma": 0.5, "sp_min_size": 32}},
           "optim": {"lr": 2e-3, "lower_lr": 2e-3, "weight_decay": 0.05, "betas": [0.9, 0.98], "eps": 1e-6,
                     "clip_grad_norm": 1.0},
           "schedule": {"name": "warmup_cosine", "warmup_fraction": 0.15, "iterations": iterations},
           "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 0,
                     "output_dir": str(out), **train}}
    return validate(cfg)


def _losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    from vocabseg.registry import load_checkpoint
    write_benchmark("voc20", tmp_path / "data", num_images=2, size=(64, 64))
    cfg = _caption_config(tmp_path, tmp_path / "full")       # 12 captions / 4 = 3 iterations per epoch
    cfg["schedule"]["iterations"] = 5                          # crosses an epoch boundary
    cfg["train"]["eval_every"] = 2                             # evaluation in between leaves training alone
    cfg["eval"].update(datasets=["voc20"], root=str(tmp_path / "data"))
    full = train(cfg, progress=False)
    assert full["iteration"] == 5 and not full["stopped"]
    ckpts = sorted((tmp_path / "full" / "checkpoints").glob("iter_*.pt"))
    assert [p.name for p in ckpts] == [f"iter_{i:08d}.pt" for i in (2, 4, 5)]
    log = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in log if "eval" in x] == [2, 4, 5] and full["eval"]["voc20"]["images"] == 2
    assert (tmp_path / "full" / "eval" / "iter_00000002_voc20.json").is_file()
    saved = load_checkpoint(tmp_path / "full" / "model")      # a vocabseg checkpoint folder: eval --model DIR
    assert all(torch.equal(v, full["model"].state_dict()[k]) for k, v in saved.state_dict().items())
    # from iteration 2: the full run evaluated there, the resumed one does not
    resumed = train(cfg, output_dir=tmp_path / "part", resume=ckpts[0], progress=False)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")[2:]
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg, output_dir=tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    cfg = _caption_config(tmp_path, tmp_path / precision, iterations=2, precision=precision)
    cfg["data"]["workers"] = 0
    out = train(cfg, progress=False)
    assert out["iteration"] == 2 and math.isfinite(out["last_loss"])
    state = torch.load(out["checkpoint"], weights_only=True)
    assert state["iteration"] == 2 and ("scale" in state["scaler"]) == (precision == "fp16")
