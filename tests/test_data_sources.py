"""Own-data sources (``folder:PATH``, ``coco:FILE.json``): written by the synthetic writer,
read back identically; every malformed case is one line naming the problem, a count and
examples."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.cli import main as cli_main
from vocabseg.data import get_dataset
from vocabseg.data.sources import SourceProblems
from vocabseg.errors import UserError
from vocabseg.testing.owndata import CLASSES, CATEGORY_IDS, write_coco, write_folder


@pytest.mark.parametrize("label_format", ["png", "png16", "tif"])
def test_folder_round_trip(tmp_path, label_format):
    truth = write_folder(tmp_path / "d", num_images=5, val=2, label_format=label_format,
                         ignore=255 if label_format == "png" else 1000)
    for split, want in (("train", truth[:3]), ("val", truth[3:])):
        ds = get_dataset(f"folder:{tmp_path / 'd'}", split)
        assert len(ds) == len(want) and ds.num_classes == len(CLASSES)
        assert ds.vocabulary.classes[0] == ("grass", "lawn") and ds.ignore_index == 255        # #ignore 1000 -> 255
        for item, t in zip(ds, want):
            assert item["image_id"] == t["image_id"]
            assert torch.equal(item["sem_seg"], torch.from_numpy(np.where(t["sem_seg"] == 1000, 255, t["sem_seg"])))
            assert torch.equal(item["image"], torch.from_numpy(t["image"]).permute(2, 0, 1))
            assert (item["sem_seg"] == ds.ignore_index).any()            # the unlabelled patch
    (tmp_path / "d" / "splits").rename(tmp_path / "nosplits")
    assert len(get_dataset(f"folder:{tmp_path / 'd'}", "val")) == 5           # no splits/: the whole folder


def test_folder_background_and_no_labels(tmp_path):
    write_folder(tmp_path / "d", num_images=2, background=0)
    ds = get_dataset(f"folder:{tmp_path / 'd'}")
    assert ds.background == 0 and ds.vocabulary.background == 0 and ds.has_labels
    shutil.rmtree(tmp_path / "d" / "labels")
    ds = get_dataset(f"folder:{tmp_path / 'd'}")
    assert not ds.has_labels and "sem_seg" not in ds[0] and ds[0]["image"].shape == (3, 48, 64)


@pytest.mark.parametrize("kind", ["instances", "panoptic"])
def test_coco_round_trip(tmp_path, kind):
    truth = write_coco(tmp_path / "c", kind, num_images=4)
    ds = get_dataset(f"coco:{tmp_path / 'c' / kind}.json")         # images/ next to the JSON; PNGs explicit below
    if kind == "panoptic":
        (tmp_path / "c" / "panoptic").rename(tmp_path / "c" / "pngs")
        with pytest.raises(UserError, match="panoptic PNG folder .* not found; give it as coco:"):
            get_dataset(f"coco:{tmp_path / 'c' / kind}.json")
        ds = get_dataset(f"coco:{tmp_path / 'c' / kind}.json:{tmp_path / 'c' / 'images'}:{tmp_path / 'c' / 'pngs'}")
        assert ds.task == "panoptic" and ds.vocabulary.classes[0] == ("grass", "lawn") and ds.vocabulary.names[1:] == list(CLASSES[1:])
        assert ds.thing_ids == [2, 3, 4, 5] and ds.num_classes == 6
    else:
        assert ds.task == "semantic" and ds.num_classes == 7 and ds.background == 0
        assert ds.vocabulary.names[:2] == ["background", "grass"] and ds.thing_ids == list(range(1, 7))
    assert len(ds) == 4
    crowd = 0
    for item, t in zip(ds, truth):
        assert item["image_id"] == t["image_id"]
        assert torch.equal(item["image"], torch.from_numpy(t["image"]).permute(2, 0, 1))
        assert torch.equal(item["sem_seg"], torch.from_numpy(t["sem_seg"]))
        assert torch.equal(item["pan_seg"], torch.from_numpy(t["pan_seg"]))
        assert item["segments_info"] == t["segments_info"]
        crowd += sum(s["iscrowd"] for s in item["segments_info"])
    assert crowd == (2 if kind == "instances" else 0)


def _one_line(tmp_path, spec, capsys, *match, split="val"):
    with pytest.raises(SourceProblems) as e:
        get_dataset(spec, split)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, UserError)
    for m in match:
        assert m in msg, msg
    assert cli_main(["eval", "--model", "san-tiny", "--dataset", spec, "--split", split]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and match[0] in err
    return msg


def test_folder_problems_are_one_line(tmp_path, capsys):
    d = tmp_path / "d"
    write_folder(d, num_images=6)
    spec = f"folder:{d}"
    stems = sorted(p.stem for p in (d / "images").iterdir())
    for s in stems[:4]:                                             # 4 images without a label
        (d / "labels" / f"{s}.png").rename(tmp_path / f"{s}.png")
    msg = _one_line(tmp_path, spec, capsys, "4 problems: 4 images without a label (images/img_000_00000.png, "
                    "images/img_000_00001.png, images/img_000_00002.png and 1 more)")
    assert len(get_dataset(spec, allow_missing=True)) == 2 and get_dataset(spec, allow_missing=True).skipped == 4
    for s in stems[:4]:
        (tmp_path / f"{s}.png").rename(d / "labels" / f"{s}.png")
    lab = np.array(Image.open(d / "labels" / f"{stems[1]}.png"))
    lab[0, 0] = 9                                                   # 6 classes: 9 is none of them
    Image.fromarray(lab).save(d / "labels" / f"{stems[1]}.png")
    _one_line(tmp_path, spec, capsys, "1 problem: 1 labels with a class index not in classes.txt (6 classes, "
              "ignore 255) (labels/img_000_00001.png: 9)")
    lab[0, 0] = 0
    Image.fromarray(lab[:, :-3]).save(d / "labels" / f"{stems[1]}.png")
    _one_line(tmp_path, spec, capsys, "1 labels of another size than their image (labels/img_000_00001.png "
              "48x61 vs 48x64)")
    Image.fromarray(lab).save(d / "labels" / f"{stems[1]}.png")
    (d / "images" / f"{stems[2]}.png").write_bytes(b"not an image")
    (d / "labels" / f"{stems[3]}.png").write_bytes(b"\x89PNG broken")
    _one_line(tmp_path, spec, capsys, "2 problems: 1 unreadable images (images/img_000_00002.png); "
              "1 unreadable or multi-channel labels (labels/img_000_00003.png)")
    write_folder(d, num_images=6)                                   # repaired
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(d / "labels" / "extra.png")
    _one_line(tmp_path, spec, capsys, "1 labels without an image (labels/extra.png)")
    (d / "labels" / "extra.png").unlink()
    assert len(get_dataset(spec)) == 6
    (d / "splits").mkdir()
    (d / "splits" / "train.txt").write_text(f"{stems[0]}\nghost\n")
    _one_line(tmp_path, spec, capsys, "1 names in splits/train.txt without an image (ghost)", split="train")
    with pytest.raises(UserError, match=r"no splits/val.txt \(splits: train\)"):
        get_dataset(spec, "val")
    (d / "classes.txt").unlink()
    with pytest.raises(UserError, match="missing classes.txt"):
        get_dataset(spec)


def test_coco_problems_are_one_line(tmp_path, capsys):
    c = tmp_path / "c"
    write_coco(c, "instances", num_images=4)
    js = c / "instances.json"
    data = json.loads(js.read_text())
    (c / "images" / data["images"][0]["file_name"]).unlink()
    data["images"][1]["height"] = 40
    data["annotations"][0]["category_id"] = 5
    js.write_text(json.dumps(data))
    _one_line(tmp_path, f"coco:{js}", capsys, "3 problems: 1 annotations of a category not in the JSON's "
              "categories (id 1: 5); 1 images not found (000100.png); 1 images of another size than the JSON says "
              "(000101.png 48x64 vs 40x64)")
    with pytest.raises(UserError, match="image folder .*elsewhere not found; give it as coco:"):
        get_dataset(f"coco:{js}:{tmp_path / 'elsewhere'}")
    js.write_text("{not json")
    with pytest.raises(UserError, match="not a COCO instances or panoptic JSON"):
        get_dataset(f"coco:{js}")
    assert CATEGORY_IDS[0] == 3
