"""ONNX export of the image side: every tiny preset through ONNX Runtime equals eager
fp32 to 1e-4 on the score maps, and the export's user mistakes are one line."""
import json
import sys

import numpy as np
import pytest
import torch

import vocabseg
from vocabseg.api import load_model
from vocabseg.cli import main
from vocabseg.errors import UserError
from vocabseg.export.onnx import ONNX_FILE, export
from vocabseg.export.runtime import OnnxImage
from vocabseg.export.tree import flatten, mark_input_sides, unflatten
from vocabseg.methods.trainingfree.model import DenseFeatures

PRESETS = ["san-tiny", "fcclip-tiny", "segclip-tiny", "maskclip-tiny", "sclip-tiny", "clearclip-tiny", "naclip-tiny",
           "catseg-tiny", "proxyclip-tiny", "sclip-tiny+resclip", "clearclip-tiny+resclip", "naclip-tiny+resclip"]
QUICK = {"maskclip-tiny"}
VOCAB = "cat; sofa, couch; potted plant; sky"


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=() if p in QUICK else pytest.mark.slow) for p in PRESETS])
def test_onnx_scores_equal_eager_fp32(tmp_path, preset):
    torch.manual_seed(0)
    model = load_model(preset)
    meta = export(model, tmp_path / "exp", sizes=_window_sizes(model, [(60, 90), (97, 41)]))
    onnx = vocabseg.load(tmp_path / "exp")
    eager = vocabseg.load(tmp_path / "exp", runtime="torch")
    assert isinstance(onnx.model.encode_image, OnnxImage)
    assert not isinstance(eager.model.encode_image, OnnxImage)
    for h, w in [(60, 90), (97, 41)]:
        a = onnx(_image(h, w), VOCAB, return_scores=True).scores
        b = eager(_image(h, w), VOCAB, return_scores=True).scores
        assert a.shape == b.shape == (4, h, w)
        assert float((a - b).abs().max()) <= 1e-4, (preset, h, w)
    assert meta["max_abs_diff"] <= 1e-4


def _window_sizes(model, images):
    """The padded window sizes these images give (for a model exported one size at a time)."""
    from vocabseg.engine.inference.image import encode
    return sorted({p for h, w in images for p in encode(model, torch.rand(3, h, w)).padded})


def test_dynamic_size_is_checked_at_a_second_size(tmp_path):
    meta = export(load_model("san-tiny"), tmp_path / "exp")
    assert meta["dynamic_size"] is True and [f["size"] for f in meta["files"]] == [None]
    checked = meta["files"][0]["checked_sizes"]
    assert len(checked) == 2 and checked[0] != checked[1]


def test_cli_exports_and_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", "maskclip-tiny", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: maskclip-tiny image side as ONNX (input 32x32 only); max abs difference")
    before = (out / "image-32x32.onnx").read_bytes()
    assert main(["export", "maskclip-tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"vocabseg export: error: {out} exists and is not empty: choose a new folder or pass --overwrite\n"
    assert (out / "image-32x32.onnx").read_bytes() == before
    assert main(["segment", str(_write(tmp_path)), "--model", str(out), "--labels", VOCAB,
                 "--out", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "img.json").is_file()


def _write(tmp_path):
    from PIL import Image
    Image.fromarray(_image(40, 70)).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def test_missing_onnxruntime_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", "maskclip-tiny", "--out", str(tmp_path / "exp")]) == 2
    assert capsys.readouterr().err == ("vocabseg export: error: ONNX export and runtime need onnx and onnxruntime: "
                                       "pip install 'vocabseg[export]'\n")
    assert not (tmp_path / "exp").exists()


def test_a_fixed_size_export_refuses_another_size(tmp_path):
    export(load_model("maskclip-tiny"), tmp_path / "exp")
    model = vocabseg.load(tmp_path / "exp").model
    with pytest.raises(UserError) as e:
        model.encode_image(torch.rand(1, 3, 32, 48))
    assert str(e.value) == (f"export {tmp_path / 'exp'} has no ONNX file for a 32x48 window (it has 32x32; "
                            "maskclip-tiny: its window size is fixed by the protocol): export again with --size 32x48")


def test_unknown_runtime_and_runtime_without_export(tmp_path):
    export(load_model("maskclip-tiny"), tmp_path / "exp")
    with pytest.raises(UserError, match=r"^unknown runtime 'openvino'; use one of onnxruntime, torch$"):
        vocabseg.load(tmp_path / "exp", runtime="openvino")
    with pytest.raises(UserError, match=r"^runtime onnxruntime runs an export folder \(vocabseg export\); "
                                        r"maskclip-tiny is not one$"):
        vocabseg.load("maskclip-tiny", runtime="onnxruntime")


def test_flatten_round_trip_with_input_sides():
    f = DenseFeatures(torch.rand(1, 4, 2, 3), (32, 48), (32, 48), (0, 0), False)
    tensors = []
    spec = json.loads(json.dumps(mark_input_sides(flatten({"a": [f, 3]}, tensors), (32, 48))))
    back = unflatten(spec, tensors, (64, 80))
    assert back["a"][1] == 3 and back["a"][0].features is tensors[0]
    assert (back["a"][0].size, back["a"][0].padded, back["a"][0].offset) == ((64, 80), (64, 80), (0, 0))


@pytest.mark.slow
def test_segclip_takes_its_hard_region_argmax_in_the_head(tmp_path):
    export(load_model("segclip-tiny"), tmp_path / "exp")
    onnx = vocabseg.load(tmp_path / "exp").model
    session, _ = onnx.encode_image.session((64, 64))
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"] * 3      # soft, regions, image: continuous
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = onnx.encode_image(x)
    up = torch.nn.functional.interpolate(feats.soft, size=(64, 64), mode="bilinear", align_corners=False)
    assert feats.size == (64, 64) and torch.equal(feats.assign, up.argmax(1))
