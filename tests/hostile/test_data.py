"""Hostile and careless inputs to the data side: benchmark folders with files missing or
damaged, `vocabseg eval` arguments, vocabulary strings and files, prompt templates.
Each test is one case; a CLI mistake must end with one `vocabseg eval: ...` line."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vocabseg.cli import main as cli_main
from vocabseg.data import get_dataset
from vocabseg.errors import VocabularyError
from vocabseg.testing import write_benchmark
from vocabseg.vocab import Vocabulary

VOC20_LABELS = "VOC2012/annotations_detectron2/val"


@pytest.fixture
def voc(tmp_path):
    """A 3-image voc20 / voc21 split; returns (root, [image stems])."""
    root = tmp_path / "ds"
    truth = write_benchmark("voc20", root, num_images=3)
    return root, [t["image_id"] for t in truth]


def _eval(capsys, *args, model="maskclip-tiny"):
    """Run `vocabseg eval` in-process -> (exit code, stdout, stderr)."""
    code = cli_main(["eval", "--model", model, "--templates", "single", "--no-progress", "--workers", "0", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.startswith("vocabseg eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- item 5: a partial split --------------------------------------------------------------------
def test_eval_missing_label_is_an_error_naming_it(voc, capsys):
    root, stems = voc
    (root / VOC20_LABELS / f"{stems[1]}.png").unlink()
    code, out, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), model="no-such-model")
    assert code == 2 and out == ""          # refused before the model is looked up
    assert _one_line(err) == (
        f"vocabseg eval: error: dataset 'voc20' (val) under {root} is incomplete: 1 of its 3 images lacks a file "
        f"(1 missing: {VOC20_LABELS}/{stems[1]}.png). Restore them, or pass --allow-missing "
        "(Python: get_dataset(..., allow_missing=True)) to use the 2 complete images\n")


def test_eval_allow_missing_counts_the_skipped_images(voc, capsys, tmp_path):
    root, stems = voc
    (root / VOC20_LABELS / f"{stems[1]}.png").unlink()
    code, out, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--allow-missing",
                           "--out", str(tmp_path / "out"))
    assert code == 0
    assert out.splitlines()[0].startswith("voc20 (2 images, 1 skipped for a missing file, ")
    result = json.loads((tmp_path / "out/eval_maskclip-tiny_voc20.json").read_text())
    assert (result["images"], result["skipped"]) == (2, 1)


def test_missing_image_of_a_listed_voc21_item_is_named(voc):
    root, stems = voc
    (root / f"VOC2012/JPEGImages/{stems[1]}.jpg").unlink()     # the middle one (first and last were checked)
    with pytest.raises(FileNotFoundError, match=f"1 missing: VOC2012/JPEGImages/{stems[1]}.jpg"):
        get_dataset("voc21", root=root)


def test_many_missing_files_show_the_first_three_and_the_count(tmp_path):
    write_benchmark("ade150", tmp_path, num_images=6)
    ds = get_dataset("ade150", root=tmp_path)
    for img, _ in ds.files[:5]:
        img.unlink()
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("ade150", root=tmp_path)
    shown = ", ".join(str(img.relative_to(tmp_path)) for img, _ in ds.files[:3])
    assert f"5 of its 6 images lack a file (5 missing: {shown} and 2 more)" in str(e.value)
    assert len(get_dataset("ade150", root=tmp_path, allow_missing=True)) == 1


def test_eval_allow_missing_with_nothing_complete_is_an_error(voc, capsys):
    root, stems = voc
    for t in stems:
        (root / VOC20_LABELS / f"{t}.png").unlink()
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--allow-missing")
    assert code == 2 and "incomplete: 3 of its 3 images lack a file" in _one_line(err)


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_garbage_image_names_the_file(voc, capsys, workers):
    root, stems = voc
    bad = root / f"VOC2012/JPEGImages/{stems[2]}.jpg"
    bad.write_bytes(b"this is not a JPEG")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--workers", str(workers))
    assert code == 2
    assert _one_line(err).startswith(f"vocabseg eval: error: {bad}: cannot read this voc20 image (cannot identify")


def test_eval_truncated_label_names_the_file(voc, capsys):
    root, stems = voc
    bad = root / VOC20_LABELS / f"{stems[0]}.png"
    bad.write_bytes(bad.read_bytes()[:60])
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--workers", "1")
    assert code == 2 and _one_line(err).startswith(f"vocabseg eval: error: {bad}: cannot read this voc20 label (")


# --- further hostile data --------------------------------------------------------------------------
def test_eval_label_value_beyond_the_classes_names_the_file(voc, capsys):
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[0]}.png"
    arr = np.array(Image.open(path))
    arr[0, 0] = 37                               # voc20 has classes 0..19 and ignore 255
    Image.fromarray(arr).save(path)
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root))
    assert code == 2
    assert _one_line(err) == f"vocabseg eval: error: {path}: label value 37 is not a voc20 class (0..19) " \
                             "nor its ignore value 255\n"


def test_label_value_beyond_the_classes_is_not_folded_into_a_subset(voc):
    """A few-class vocabulary remaps labels; a bad value used to be clamped into the last class."""
    from vocabseg.engine.evaluation.subset import with_vocabulary
    from vocabseg.data.benchmarks import DatasetError
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[0]}.png"
    arr = np.array(Image.open(path))
    arr[:] = 40
    Image.fromarray(arr).save(path)
    ds = with_vocabulary(get_dataset("voc20", root=root), Vocabulary.parse("cat; dog"))
    with pytest.raises(DatasetError, match="label value 40 is not a voc20 class"):
        ds[0]


def test_eval_label_of_another_size_than_its_image(voc, capsys):
    root, stems = voc
    path = root / VOC20_LABELS / f"{stems[1]}.png"
    Image.fromarray(np.array(Image.open(path))[:40, :50]).save(path)
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root))
    assert code == 2
    assert _one_line(err) == f"vocabseg eval: error: {path}: label is 40x50 (HxW), its image {stems[1]}.jpg 48x64\n"


def test_eval_empty_split(tmp_path, capsys):
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
    code, _, err = _eval(capsys, "--dataset", "ade150", "--root", str(tmp_path), model="no-such-model")
    assert code == 2 and "not found under" in _one_line(err) and "validation/*.png" in err


def test_eval_unknown_dataset_suggests_close_names(voc, capsys):
    code, _, err = _eval(capsys, "--dataset", "ade15", model="no-such-model")
    assert code == 2 and _one_line(err).startswith(
        "vocabseg eval: error: unknown dataset 'ade15'; did you mean ade150? known: voc20, voc21")


def test_eval_root_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "datasets.txt"
    f.write_text("x")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(f), model="no-such-model")
    assert code == 2 and _one_line(err) == f"vocabseg eval: error: the datasets root {f} is a file, not a folder\n"


def test_eval_out_an_existing_file_is_refused_before_the_model_loads(voc, tmp_path, capsys):
    root, _ = voc
    out = tmp_path / "results"
    out.write_text("my notes")
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--out", str(out), model="no-such-model")
    assert code == 2 and _one_line(err) == f"vocabseg eval: error: --out {out} is a file, not a folder\n"
    assert out.read_text() == "my notes"


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_zero_or_negative(voc, capsys, limit):
    root, _ = voc
    code, _, err = _eval(capsys, "--dataset", "voc20", "--root", str(root), "--limit", limit)
    assert code == 2 and _one_line(err) == "vocabseg eval: error: --limit must be at least 1\n"
