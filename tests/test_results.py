import json

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.data.readers import rgb_to_id
from vocabseg.results import InstanceResult, PanopticResult, SemanticResult, confidence_of
from vocabseg.vocab import Vocabulary

VOCAB = Vocabulary.parse("sky; tree, bush; road")


def _semantic(h=20, w=30, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(c, h, w, generator=g)
    image = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
    vocab = VOCAB if c == 3 else Vocabulary(tuple((f"class {i}",) for i in range(c)))
    return SemanticResult(scores.argmax(0), confidence_of(scores), vocab, image, scores, "test")


def test_confidence_is_the_winner_share_or_softmax():
    s = torch.tensor([[[1.0]], [[3.0]]])
    assert torch.allclose(confidence_of(s), torch.tensor([[0.75]]))
    s = torch.tensor([[[-1.0]], [[1.0]]])
    assert torch.allclose(confidence_of(s), torch.softmax(torch.tensor([-1.0, 1.0]), 0)[1:].view(1, 1))


def test_summary_counts_shares_and_confidence():
    r = _semantic()
    s = r.summary()
    counts = torch.bincount(r.labels.flatten(), minlength=3)
    assert sum(c["pixels"] for c in s["classes"]) == r.labels.numel()
    for c in s["classes"]:
        m = r.labels == c["id"]
        assert c["pixels"] == int(counts[c["id"]]) and c["name"] == VOCAB.names[c["id"]]
        assert c["mean_confidence"] == pytest.approx(float(r.confidence[m].mean()), abs=1e-5)
    assert [c["share"] for c in s["classes"]] == sorted((c["share"] for c in s["classes"]), reverse=True)


def test_save_writes_label_png_overlay_and_json_that_read_back(tmp_path):
    r = _semantic()
    paths = r.save(tmp_path, "img")
    lab = np.array(Image.open(paths["labels"]))
    assert Image.open(paths["labels"]).mode == "P" and np.array_equal(lab, r.labels.numpy())
    assert np.array_equal(np.load(paths["scores"]), r.scores.numpy())
    ov = Image.open(paths["overlay"])
    assert ov.size[0] > 30 and ov.size[1] >= 20          # image plus legend panel
    assert json.loads(paths["summary"].read_text()) == json.loads(json.dumps(r.summary()))
    assert not list(tmp_path.glob("*.tmp*"))           # no temporary file left (old or new naming)


def test_more_than_256_classes_are_saved_16_bit(tmp_path):
    r = _semantic(c=300)
    r.labels[0, 0] = 299
    lab = np.array(Image.open(r.save(tmp_path, "big")["labels"]))
    assert lab.dtype == np.uint16 or lab.max() == 299
    assert np.array_equal(lab.astype(np.int64), r.labels.numpy())


def test_highlight_paints_only_that_class():
    r = _semantic()
    plain = np.asarray(r.overlay(legend=False, alpha=0.0)).astype(int)
    hi = np.asarray(r.overlay(legend=False, highlight=1)).astype(int)
    changed = (np.abs(plain - hi).sum(-1) > 0)
    assert changed[(r.labels == 1).numpy()].mean() > 0.5
    assert not changed[(r.labels != 1).numpy()].any()


def _panoptic():
    pan = torch.zeros(16, 20, dtype=torch.int32)
    pan[:8] = 1                    # stuff: sky
    pan[8:, :10] = 2               # thing: tree instance
    pan[8:, 10:18] = 300           # thing: another tree, id above 255
    segments = [{"id": 1, "category_id": 0, "isthing": False, "score": 0.9},
                {"id": 2, "category_id": 1, "isthing": True, "score": 0.8},
                {"id": 300, "category_id": 1, "isthing": True, "score": 0.7}]
    return PanopticResult(pan, segments, VOCAB, torch.zeros(3, 16, 20, dtype=torch.uint8), "test")


def test_panoptic_export_round_trips(tmp_path):
    r = _panoptic()
    paths = r.save(tmp_path, "pan")
    ids = rgb_to_id(np.array(Image.open(paths["panoptic"]).convert("RGB")))
    assert np.array_equal(ids, r.pan_seg.numpy())
    record = json.loads(paths["summary"].read_text())
    info = {s["id"]: s for s in record["segments_info"]}
    assert info[300]["area"] == 64 and info[300]["bbox"] == [10, 8, 8, 8] and info[2]["isthing"]
    assert info[1]["category_id"] == 0 and record["categories"][1]["name"] == "tree"
    sem = r.semantic()
    assert (sem[:8] == 0).all() and (sem[8:, :18] == 1).all() and (sem[8:, 18:] == -1).all()
    assert Image.open(paths["overlay"]).size[0] > 20


def test_instances_rle_round_trips_through_pycocotools(tmp_path):
    from pycocotools import mask as mask_util
    masks = torch.zeros(2, 12, 15, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 5:, :4] = True
    r = InstanceResult(masks, torch.tensor([1, 2]), torch.tensor([0.9, 0.6]), VOCAB)
    out = json.loads(r.save(tmp_path, "inst")["instances"].read_text())["instances"]
    for m, rec in zip(masks, out):
        rle = dict(rec["segmentation"], counts=rec["segmentation"]["counts"].encode())
        assert np.array_equal(mask_util.decode(rle).astype(bool), m.numpy())
    assert out[0]["bbox"] == [3.0, 2.0, 6.0, 4.0] and out[1]["category_id"] == 2


def test_json_never_holds_nan(tmp_path):
    import json
    import math
    from vocabseg.results import _save_json, finite_json
    obj = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2.5, "x")}
    assert finite_json(obj) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2.5, "x"]}
    _save_json(obj, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda c: math.nan)    # strict: no NaN literal accepted silently
    assert back["a"] is None and back["b"][1] is None
