"""The tiny FC-CLIP end to end: shapes, frozen CLIP, optimiser groups, LSJ targets,
engine wrappers, and overfitting a few synthetic COCO-panoptic images."""
import math

import pytest
import torch
import torch.nn as nn

from vocabseg.data import get_dataset
from vocabseg.testing.synthetic import write_benchmark
from vocabseg.engine import inference
from vocabseg.methods.fcclip.presets import PRESETS
from vocabseg.vocab import Vocabulary


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PRESETS["fcclip-tiny"].build().eval()


def test_features_shapes_and_frozen_clip(tiny):
    feats = tiny.encode_image(torch.randn(2, 3, 64, 96))
    q = tiny.decoder.num_queries
    assert feats["mask_logits"].shape == (2, q, 16, 24)
    assert feats["class_emb"].shape == feats["clip_emb"].shape == (2, q, 32)
    assert feats["size"] == (64, 96)
    vocab = Vocabulary.parse("cat; dog, puppy; sky")
    sem = tiny.classify(feats, tiny.text_encoder()(vocab), vocab)
    assert sem.shape == (2, 3, 64, 96) and (sem >= 0).all()
    assert not any(p.requires_grad for p in tiny.clip.parameters())
    tiny.train()
    assert not tiny.clip.training and tiny.decoder.training
    tiny.eval()
    res = tiny.backbone.features(torch.randn(1, 3, 64, 64))
    assert [res[f"res{i}"].shape[1] for i in range(2, 6)] == list(tiny.backbone.channels)
    assert [res[f"res{i}"].shape[-1] for i in range(2, 6)] == [16, 8, 4, 2]
    assert torch.equal(res["clip_dense"], res["res5"])          # ConvNeXt's norm_pre is the identity
    assert not any(k.startswith("backbone.") for k in tiny.state_dict())


def test_param_groups_follow_the_published_weight_decay_rules(tiny):
    groups = tiny.param_groups({"optim": {"weight_decay": 0.05}})
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.0]
    ids = [{id(p) for p in g["params"]} for g in groups]
    trainable = {id(p) for p in tiny.parameters() if p.requires_grad}
    assert set().union(*ids) == trainable and sum(len(i) for i in ids) == len(trainable)
    assert id(tiny.decoder.logit_scale) in ids[0] and id(tiny.pixel_decoder.level_embed) in ids[0]
    assert id(tiny.decoder.norm.weight) in ids[1] and id(tiny.pixel_decoder.lateral.norm.weight) in ids[1]
    assert id(tiny.decoder.query_feat.weight) in ids[2] and id(tiny.void_embedding.weight) in ids[2]
    for m in tiny.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight.requires_grad:
            assert id(m.weight) in ids[1]


def test_train_transform_gives_lsj_crops_and_instance_targets(tmp_path, tiny):
    write_benchmark("coco-panoptic", tmp_path, split="train", num_images=2, size=(48, 64))
    item = get_dataset("coco-panoptic", split="train", root=tmp_path)[1]
    torch.manual_seed(3)
    out = tiny.train_transform({"data": {"image_size": 64}})(item)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    inst = out["instances"]
    kept = [s for s in out["segments_info"] if not s["iscrowd"]]
    assert inst["labels"].tolist() == [s["category_id"] for s in kept]
    for m, s in zip(inst["masks"], kept):
        assert torch.equal(m, out["pan_seg"] == s["id"])


def test_engine_wrappers_return_original_size(tiny):
    image = torch.rand(3, 50, 70)
    tiny.set_resolution(64, 128)
    try:
        feats = inference.encode(tiny, image)
    finally:
        tiny.set_resolution(800, 1333)
    vocab = Vocabulary.parse("cat; sky")
    text = tiny.text_encoder()(vocab)
    assert feats.resized == (64, 90) and feats.padded == [(64, 96)]
    pan = inference.panoptic(tiny, feats, text, vocab)
    assert pan["pan_seg"].shape == (50, 70) and pan["pan_seg"].dtype == torch.int32
    ins = inference.instances(tiny, feats, text, vocab)
    assert ins["masks"].shape[1:] == (50, 70) and len(ins["labels"]) == len(ins["scores"]) <= 100
    sem = inference.scores(tiny, feats, text, vocab)
    assert sem.shape == (2, 50, 70)
    # the published semantic path of panoptic configs: masks resized before the sum
    logits = tiny.class_logits(feats.features[0], text, vocab)[0]
    masks = torch.nn.functional.interpolate(feats.features[0]["mask_logits"], size=(64, 96), mode="bilinear")
    masks = torch.nn.functional.interpolate(masks[:, :, :64, :90], size=(50, 70), mode="bilinear")[0]
    want = torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], masks.sigmoid())
    assert torch.allclose(sem, want, atol=1e-6)


def _iou(a, b):
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@pytest.mark.slow
def test_tiny_fcclip_overfits_synthetic_panoptic_images(tmp_path):
    torch.manual_seed(0)
    write_benchmark("coco-panoptic", tmp_path, split="train", num_images=4, size=(32, 32))
    ds = get_dataset("coco-panoptic", split="train", root=tmp_path)
    vocab = ds.vocabulary
    picks = [ds[0], ds[2]]
    model = PRESETS["fcclip-tiny"].build()
    # the random tiny text tower embeds all 133 names within cos ~0.99 of each other:
    # start the in-vocabulary scale at its cap so they separate within a few steps
    with torch.no_grad():
        model.decoder.logit_scale.fill_(math.log(100.0))
    items = [{"image": it["image"].float() / 255, "pan_seg": it["pan_seg"], "segments_info": it["segments_info"]}
             for it in picks]
    opt = torch.optim.AdamW(model.param_groups({"optim": {"weight_decay": 0.05}}), lr=4e-3)
    model.train()
    first = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny tensors: threads only add synchronisation
    try:
        for _ in range(100):
            loss = sum(model.forward_train(items, vocab).values())
            first = float(loss.detach()) if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert float(loss.detach()) < first / 8
    model.eval()
    model.set_resolution(32, 64)
    text = model.text_encoder()(vocab)
    matched = total = 0
    for it in picks:
        feats = inference.encode(model, it["image"].float() / 255)
        sem = inference.scores(model, feats, text, vocab).argmax(0)
        valid = it["sem_seg"] != 255
        assert float((sem[valid] == it["sem_seg"][valid]).float().mean()) > 0.9
        pan = inference.panoptic(model, feats, text, vocab, things=ds.thing_ids)
        for gt in it["segments_info"]:
            total += 1
            matched += any(s["category_id"] == gt["category_id"] and s["isthing"] == gt["isthing"]
                           and _iou(pan["pan_seg"] == s["id"], it["pan_seg"] == gt["id"]) > 0.5
                           for s in pan["segments"])
    assert matched >= total - 1, (matched, total)


def test_recipe_config_holds_the_published_recipe_and_fits_the_model(tmp_path):
    import inspect
    from pathlib import Path

    import yaml
    from vocabseg.methods.fcclip.model import FCCLIP
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "fcclip-convnext-l.yaml").read_text())
    params = inspect.signature(FCCLIP.__init__).parameters
    assert set(cfg["model"]) - {"preset", "weights"} <= set(params)
    assert cfg["model"]["preset"] == "fcclip-convnext-l" and cfg["data"]["vocabulary"] == "coco-panoptic:fcclip"
    assert cfg["data"]["train"] == {"dataset": "coco-panoptic", "split": "train"}
    o, s = cfg["optim"], cfg["schedule"]
    assert (o["name"], float(o["lr"]), o["weight_decay"], o["clip_grad_norm"], o["clip_grad_type"]) == \
        ("adamw", 1e-4, 0.05, 0.01, "full_model")
    assert (s["name"], s["iterations"], s["milestones"], s["gamma"]) == ("multistep", 368750, [327778, 355092], 0.1)
    assert cfg["train"]["batch_size"] == 16
    # the model's own pieces read the same config
    model = PRESETS["fcclip-tiny"].build(**{k: v for k, v in cfg["model"].items()
                                            if k in ("loss_weights", "no_object_weight", "oversample_ratio",
                                                     "importance_sample_ratio")})
    assert model.criterion.weights == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert [g["weight_decay"] for g in model.param_groups(cfg)] == [0.05, 0.0, 0.0]
    write_benchmark("coco-panoptic", tmp_path, split="train", num_images=1, size=(40, 52))
    item = get_dataset("coco-panoptic", split="train", root=tmp_path)[0]
    small = {**cfg, "data": {**cfg["data"], "transform": {**cfg["data"]["transform"], "image_size": 96}}}
    assert model.train_transform(small)(item)["image"].shape == (3, 96, 96)


def test_cli_segment_panoptic_writes_png_json_and_overlay(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from vocabseg.checkpoint import save_checkpoint
    from vocabseg.cli import main
    from vocabseg.data.readers import rgb_to_id
    torch.manual_seed(0)
    model = PRESETS["fcclip-tiny"].build().eval()
    image = torch.rand(3, 40, 56)
    feats = inference.encode(model, image)
    with torch.no_grad():   # random weights give every query to void: point the void row away from them
        emb = torch.nn.functional.normalize(feats.features[0]["class_emb"][0], dim=-1)
        model.void_embedding.weight.copy_(-emb.mean(0, keepdim=True))
    folder = save_checkpoint(model, tmp_path / "ck")
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "img.png")
    rc = main(["segment", str(tmp_path / "img.png"), "--model", str(folder), "--task", "panoptic",
               "--labels", "person; dog, puppy; grass; sky", "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    ids = rgb_to_id(np.array(Image.open(tmp_path / "out" / "img_panoptic.png").convert("RGB")))
    record = json.loads((tmp_path / "out" / "img_panoptic.json").read_text())
    assert ids.shape == (40, 56) and record["segments_info"]
    for s in record["segments_info"]:
        assert s["area"] == int((ids == s["id"]).sum()) > 0 and s["isthing"]      # a user vocabulary: all things
    assert set(np.unique(ids)) - {0} == {s["id"] for s in record["segments_info"]}
    assert Image.open(tmp_path / "out" / "img_overlay.png").size[1] == 40
