"""`vocabseg inspect-dataset`: problems reported (not raised), class shares equal to a count
over the written labels, a grid picture."""
import json

import numpy as np
import pytest
from PIL import Image

from vocabseg.cli import main as cli_main
from vocabseg.testing.owndata import CLASSES, write_coco, write_folder


def test_inspect_folder_counts_and_picture(tmp_path, capsys):
    truth = write_folder(tmp_path / "d", num_images=5)
    lab = tmp_path / "d" / "labels" / f"{truth[4]['image_id']}.png"
    lab.unlink()                                                   # a problem: reported, the rest inspected
    out = tmp_path / "out"
    assert cli_main(["inspect-dataset", f"folder:{tmp_path / 'd'}", "--out", str(out), "--grid", "3",
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1 problem: 1 images without a label (images/img_000_00004.png)" in text
    stats = json.loads((out / "inspect_folder-d.json").read_text())
    sems = np.stack([t["sem_seg"] for t in truth[:4]])
    counts = np.bincount(sems[sems != 255], minlength=len(CLASSES))
    assert stats["images"] == 4 and stats["labelled_pixels"] == counts.sum()
    assert stats["ignored_pixels"] == int((sems == 255).sum())
    for c, name in enumerate(["grass"] + list(CLASSES[1:])):
        assert stats["per_class"][name]["pixels"] == counts[c]
        assert stats["per_class"][name]["share"] == pytest.approx(counts[c] / counts.sum() * 100)
        assert stats["per_class"][name]["images"] == int(sum((s == c).any() for s in sems))
    assert stats["height"] == {"min": 48, "median": 48.0, "max": 48} and stats["common_sizes"] == {"48x64": 4}
    grid = Image.open(out / "grid_folder-d.png")
    assert grid.size[0] > 3 * (192 + 4) and grid.size[1] >= 192      # 3 tiles in a row, then the legend panel
    px = np.asarray(grid)[:144, :192].astype(int)                    # 48x64 grown 3x into a 192 px tile
    img = np.asarray(Image.fromarray(truth[0]["image"]).resize((192, 144), Image.NEAREST)).astype(int)
    unlabelled = np.kron(truth[0]["sem_seg"] == 255, np.ones((3, 3), bool))
    inner = unlabelled & np.roll(unlabelled, 3, 0) & np.roll(unlabelled, -3, 0) & np.roll(unlabelled, 3, 1) \
        & np.roll(unlabelled, -3, 1)                                 # away from the drawn outlines
    assert np.abs(px - img)[inner].max() == 0                          # the ignore value: left as it is
    assert np.abs(px - img)[~unlabelled].mean() > 10                  # labels drawn over the image


def test_inspect_coco_and_unlabelled_folder(tmp_path, capsys):
    write_coco(tmp_path / "c", "instances", num_images=3)
    assert cli_main(["inspect-dataset", f"coco:{tmp_path / 'c' / 'instances.json'}", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 images, 7 classes, ignore value 255, background class 0" in text and "problems: none found" in text
    write_folder(tmp_path / "d", num_images=2)
    (tmp_path / "d" / "labels").rename(tmp_path / "gone")
    assert cli_main(["inspect-dataset", f"folder:{tmp_path / 'd'}", "--no-progress"]) == 0
    assert "no labels/ folder" in capsys.readouterr().out
    assert cli_main(["inspect-dataset", f"folder:{tmp_path / 'nothing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
