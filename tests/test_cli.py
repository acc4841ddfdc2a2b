import json

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.api import load_model
from vocabseg.checkpoint import save_checkpoint
from vocabseg.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_checkpoint(load_model("san-tiny"), tmp_path_factory.mktemp("ck") / "san-tiny"))


def _write_image(path, h=48, w=80, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_segment_writes_the_three_outputs(tmp_path, checkpoint, capsys):
    _write_image(tmp_path / "street.jpg")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "street.jpg"), "--model", checkpoint,
               "--labels", "road; car, truck; person; tree", "--out", str(out)])
    assert rc == 0
    labels = np.array(Image.open(out / "street_labels.png"))
    assert labels.shape == (48, 80) and labels.max() < 4
    summary = json.loads((out / "street.json").read_text())
    assert summary["vocabulary"] == "road; car, truck; person; tree"
    assert sum(c["pixels"] for c in summary["classes"]) == 48 * 80
    for c in summary["classes"]:
        assert c["pixels"] == int((labels == c["id"]).sum())
        assert c["name"] == ["road", "car", "person", "tree"][c["id"]]
    assert Image.open(out / "street_overlay.png").size[1] >= 48
    assert "1 of 1 images" in capsys.readouterr().err


def test_bad_images_are_reported_and_the_rest_processed(tmp_path, checkpoint, capsys):
    _write_image(tmp_path / "good.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path), str(tmp_path / "missing.jpg"), "--model", checkpoint,
               "--labels", "a; b", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "good_labels.png").is_file() and not (out / "corrupt_labels.png").exists()
    assert "corrupt.jpg" in err and "missing.jpg" in err and "Traceback" not in err
    assert "1 of 3 images" in err


@pytest.mark.parametrize("args,msg", [
    (["--labels", " ; "], "no class names"),
    (["--labels", "car; car"], "appears in classes"),
    (["--labels-file", "/nonexistent.txt"], "vocabulary file not found"),
    (["--dataset-vocab", "nodataset"], "unknown dataset vocabulary"),
    (["--labels", "a", "--model", "no-such-model"], "unknown model"),
    (["--labels", "a", "--device", "cuda"], "CUDA is not available"),
    (["--labels", "a", "--task", "panoptic"], "does not do panoptic"),
    (["--labels", "a", "--templates", "fancy"], "unknown template set"),
    (["--labels", "a", "--show-groups"], "--show-groups"),
    (["--labels", "a", "--refine", "crf"], "unknown refinement 'crf'"),
    (["--labels", "a", "--refine", "pamr", "--tta"], "--refine applies to --task semantic without --tta"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, checkpoint, capsys, args, msg):
    _write_image(tmp_path / "x.png")
    argv = ["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    if "--model" not in args:
        argv += ["--model", checkpoint]
    rc = main(argv + args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert rc == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in err


def test_no_images_is_an_error(tmp_path, checkpoint, capsys):
    assert main(["segment", str(tmp_path), "--labels", "a", "--model", checkpoint]) == 2
    assert "no images found" in capsys.readouterr().err


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "san-vit-b16" in out and "(default)" in out and "san-tiny" not in out
    assert main(["models", "--all"]) == 0
    assert "san-tiny" in capsys.readouterr().out
