"""SAN training recipe: the configs hold the published numbers, param_groups gives
the published trainable / frozen sets and weight decays, the transform gives
640 x 640 crops."""
import re
from pathlib import Path

import pytest
import torch
import yaml

from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load(name):
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["san-vit-b16", "san-vit-l14"])
def test_config_holds_the_published_recipe(name):
    cfg = load(name)
    assert cfg["model"]["preset"] == name and cfg["model"]["clip_weights"] == "openai"
    assert cfg["model"]["loss_weights"] == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert cfg["model"]["no_object_weight"] == 0.1
    assert cfg["model"]["train_points"] == 112 * 112
    assert (cfg["model"]["oversample_ratio"], cfg["model"]["importance_sample_ratio"]) == (3.0, 0.75)
    assert cfg["data"]["train"] == {"dataset": "coco-stuff", "split": "train"}
    assert len(Vocabulary.resolve(cfg["data"]["vocabulary"])) == 171
    t = cfg["data"]["transform"]
    assert t["short_sizes"] == [320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960]
    assert (t["max_size"], t["crop_size"], t["cat_max_ratio"], t["color_aug"], t["ignore_index"]) == \
        (2560, 640, 1.0, True, 255)
    o = cfg["optim"]
    assert (o["name"], o["lr"], o["weight_decay"], o["weight_decay_embed"], o["weight_decay_norm"]) == \
        ("adamw", 1e-4, 1e-4, 0.0, 0.0)
    assert (o["clip_grad_norm"], o["clip_grad_type"]) == (0.01, "full_model")
    assert cfg["schedule"] == {"name": "poly", "iterations": 60000, "power": 0.9, "warmup_iters": 0}
    assert (cfg["train"]["batch_size"], cfg["train"]["precision"]) == (32, "fp16")
    assert cfg["eval"]["datasets"] == ["ade847", "pc459", "ade150", "pc59", "voc20"]
    assert cfg["eval"]["protocol"] == {"short_side": 640, "max_side": 2560, "mode": "whole"}


@pytest.mark.parametrize("name", ["san-vit-b16", "san-vit-l14"])
def test_param_groups_are_the_published_ones(name):
    cfg = load(name)
    model_kw = {k: v for k, v in cfg["model"].items() if k not in ("preset", "clip_weights")}
    with torch.device("meta"):
        model = get_spec(name).build(**model_kw)
    crit = model.criterion
    assert (crit.weights, crit.eos_coef, crit.num_points) == ({"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
                                                              0.1, 12544)
    assert (crit.matcher.cost_class, crit.matcher.cost_mask, crit.matcher.cost_dice) == (2.0, 5.0, 5.0)
    for p in model.parameters():        # param_groups must freeze whatever was unfrozen
        p.requires_grad_(True)
    groups = model.param_groups(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert all(g["lr"] == 1e-4 for g in groups)
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"default": 1e-4, "embed": 0.0, "norm": 0.0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable == {n for n in names.values() if n.startswith("side.")} | \
        {"clip.visual.positional_embedding", "bg_embed"}
    assert frozen == {n for n in names.values() if n.startswith("clip.")} - {"clip.visual.positional_embedding"}
    assert set().union(*got.values()) == trainable and sum(map(len, got.values())) == len(trainable)
    assert got["embed"] == {"clip.visual.positional_embedding", "side.vit_model.pos_embed", "side.query_embed",
                            "side.query_pos_embed"}
    assert got["norm"] == {n for n in trainable if re.fullmatch(r"side\.vit_model\.blocks\.\d\.norm[12]\.(weight|bias)", n)}
    assert len(got["norm"]) == 8 * 2 * 2
    # as published: bg_embed, biases and the fusion layers' channel LayerNorm are decayed
    assert {"bg_embed", "side.fusion_layers.layer_0.input_proj.0.weight",
            "side.mask_decoder.bias_scaling.bias"} <= got["default"]
    trainable_count = sum(p.numel() for g in groups for p in g["params"])
    assert abs(trainable_count - {"san-vit-b16": 8.37e6, "san-vit-l14": 9.32e6}[name]) < 0.01 * 9e6


def test_train_transform_gives_padded_640_crops():
    cfg = load("san-vit-b16")
    model = get_spec("san-tiny").build()
    torch.manual_seed(1)
    item = {"image": torch.randint(0, 256, (3, 180, 240), dtype=torch.uint8),
            "sem_seg": torch.randint(0, 171, (180, 240))}
    tf = model.train_transform(cfg)
    for _ in range(3):
        out = tf(item)
        assert out["image"].shape == (3, 640, 640) and out["image"].dtype == torch.float32
        assert 0 <= out["image"].min() and out["image"].max() <= 1
        assert out["sem_seg"].shape == (640, 640)
    # short side 320 -> 320 x 427: padded to 640 x 640 with 128 / 255 after jitter and flip
    small = model.train_transform({**cfg["data"]["transform"], "short_sizes": [320]})(item)
    assert (small["sem_seg"][320:] == 255).all() and (small["sem_seg"][:, 427:] == 255).all()
    assert (small["sem_seg"][:320, :427] != 255).all()
    assert (small["image"][:, 320:] == 128 / 255).all() and (small["image"][:, :, 427:] == 128 / 255).all()
    with pytest.raises(ValueError, match="unknown SAN transform keys"):
        model.train_transform({"crop": 640})
