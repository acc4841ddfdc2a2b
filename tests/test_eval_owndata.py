"""`vocabseg eval` on your own data: refused without labels; with labels the metrics, a
confusion summary in the JSON and, with --plots, two PNGs."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.cli import main as cli_main
from vocabseg.engine.evaluation.plots import confusion_png, confusion_summary, iou_bars_png
from vocabseg.testing.owndata import write_folder


def test_confusion_summary_against_a_hand_matrix(tmp_path):
    mat = torch.tensor([[8, 2, 0], [1, 5, 4], [0, 0, 0]])          # class c never in the ground truth
    s = confusion_summary(mat, ["a", "b", "c"], top=2)
    assert s["top"] == [{"class": "b", "predicted": "c", "pixels": 4, "share": 40.0},
                        {"class": "a", "predicted": "b", "pixels": 2, "share": 20.0}]
    assert s["per_class"] == {"a": {"pixels": 10, "recall": 80.0, "confused_with": [{"class": "b", "share": 20.0}]},
                              "b": {"pixels": 10, "recall": 50.0, "confused_with": [{"class": "c", "share": 40.0},
                                                                                     {"class": "a", "share": 10.0}]}}
    a = Image.open(confusion_png(mat, ["a", "b", "c"], tmp_path / "m.png", cell=16))
    b = Image.open(iou_bars_png({"a": 61.5, "b": 20.0, "c": None}, tmp_path / "i.png"))
    assert a.size[1] == 150 + 3 * 16 + 30 and a.size[0] >= 150 + 3 * 16 + 10 and b.size[1] == 18 * 2 + 40
    px = np.asarray(a)
    assert tuple(px[150 + 1 * 16 + 5, 150 + 2 * 16 + 5]) == (153, 193, 255)   # b -> c: 40% of row b, 255 * (1 - .4), 255 * (1 - .24)


def test_eval_folder_refuses_without_labels_and_reports_confusions(tmp_path, capsys):
    write_folder(tmp_path / "d", num_images=3)
    out = tmp_path / "out"
    assert cli_main(["eval", "--model", "san-tiny", "--dataset", f"folder:{tmp_path / 'd'}", "--out", str(out),
                     "--plots", "--workers", "0", "--no-progress"]) == 0
    js = json.loads((out / "eval_san-tiny_folder-d.json").read_text())
    mat = np.array(js["confusion_matrix"])
    assert mat.sum() == js["pixels"] and js["images"] == 3
    off = mat.copy()
    np.fill_diagonal(off, 0)
    g, p = np.unravel_index(off.argmax(), off.shape)
    names = list(js["per_class_iou"])
    assert js["confusion"]["top"][0] == {"class": names[g], "predicted": names[p], "pixels": int(off[g, p]),
                                         "share": pytest.approx(off[g, p] / mat[g].sum() * 100)}
    assert (out / "confusion_san-tiny_folder-d.png").is_file() and (out / "iou_san-tiny_folder-d.png").is_file()
    assert "top confusions:" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "d" / "labels")
    assert cli_main(["eval", "--model", "san-tiny", "--dataset", f"folder:{tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no labels (no labels/ folder): evaluation needs ground truth" in err and "\n" not in err
    assert cli_main(["eval", "--model", "san-tiny", "--dataset", "voc20", "--plots"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
