"""Each prepare converter on a synthetic official download: the reader reads back the
labels expected from an independent mapping written here, a rerun does no work, an
interrupted run resumes, and the source is left untouched."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg import cli
from vocabseg.data import get_dataset
from vocabseg.data import prepare as P
from vocabseg.testing.raw import write_raw
from vocabseg.vocab import Vocabulary

# --- independent mappings (from the datasets' own documentation) ---
COCO_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}  # ids of the 182 COCO-Stuff range without pixels
COCO_STUFF_USED = [i for i in range(1, 183) if i not in COCO_UNUSED]  # 171
COCO_THINGS = [i for i in range(1, 91) if i not in COCO_UNUSED]  # 80
CITY = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
        27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # cityscapesscripts labels.py id -> trainId
ADE_FULL = {2978: 0, 312: 1, 2420: 2, 1831: 11, 3148: 846}  # wall, building, sky, person, adding machine

SRC = {"voc": "VOC2012", "pcontext": "VOC2010", "pcontext-full": "VOC2010", "ade20k": "ADEChallengeData2016",
       "ade20k-full": "ADE20K_2021_17_01", "cityscapes": "cityscapes", "coco-stuff": "coco",
       "coco-object": "coco", "coco-panoptic": "coco"}


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _map(raw, table, default):
    out = np.full(raw.shape, default, dtype=np.int64)
    for k, v in table.items():
        out[raw == k] = v
    return out


def _pc59_expected(raw):
    names459 = Vocabulary.from_dataset("pc459").names
    names59 = Vocabulary.from_dataset("pc59").names
    alias = {"table": "diningtable"}
    table = {}
    for c in np.unique(raw[raw > 0]):
        n = alias.get(names459[c - 1], names459[c - 1])
        if n in names59:
            table[int(c)] = names59.index(n)
    return _map(raw, table, 255)


EXPECTED = {  # benchmark -> raw record -> expected sem_seg
    "voc20": lambda r: np.where((r["raw"] == 0) | (r["raw"] == 255), 255, r["raw"] - 1),
    "voc21": lambda r: r["raw"],
    "pc59": lambda r: _pc59_expected(r["raw"]),
    "pc60": lambda r: np.where(_pc59_expected(r["raw"]) == 255, 0, _pc59_expected(r["raw"]) + 1),
    "pc459": lambda r: np.where(r["raw"] == 0, 65535, r["raw"] - 1),
    "ade150": lambda r: np.where(r["raw"] == 0, 255, r["raw"] - 1),
    "cityscapes": lambda r: _map(r["raw"], CITY, 255),
    "coco-stuff": lambda r: _map(r["stuffmap"], {c - 1: i for i, c in enumerate(COCO_STUFF_USED)}, 255),
    "coco-object": lambda r: _map(r["objects"], {c: i + 1 for i, c in enumerate(COCO_THINGS)}, 0),
    "coco-panoptic": lambda r: _map(r["pan"], {s["id"]: _pan_contiguous(s["category_id"]) for s in r["segments"]},
                                    255),
}


def _pan_contiguous(cat):
    return (COCO_THINGS.index(cat) if cat in COCO_THINGS else None) if cat <= 90 else {92: 80, 93: 81, 95: 82, 100: 83}[cat]  # banner, blanket, bridge, cardboard


@pytest.mark.parametrize("kind,names", [
    ("voc", ["voc20", "voc21"]), ("pcontext", ["pc59", "pc60"]), ("pcontext-full", ["pc459"]),
    ("ade20k", ["ade150"]), ("cityscapes", ["cityscapes"]), ("coco-stuff", ["coco-stuff"]),
    ("coco-object", ["coco-object"]), ("coco-panoptic", ["coco-panoptic"])])
def test_prepare_round_trip(kind, names, tmp_path):
    recs = write_raw(kind, tmp_path / "dl", splits=("train", "val"))
    src = tmp_path / "dl" / SRC[kind]
    before = _snapshot(tmp_path / "dl")
    root = tmp_path / "datasets"
    first = P.prepare(kind, src, root)
    assert first["written"] > 0 and first["skipped"] == 0
    for name in names:
        for split in ("train", "val"):
            ds = get_dataset(name, split, root=root)
            want = [r for r in recs if r["split"] in (split, {"train": "training", "val": "validation"}[split])]
            assert len(ds) == len(want) == 2
            for i, r in enumerate(want):
                item = ds[i]
                assert str(item["image_id"]).zfill(len(r["stem"])) == r["stem"]
                assert torch.equal(item["sem_seg"], torch.from_numpy(EXPECTED[name](r))), (name, split, i)
                if name == "coco-panoptic":
                    assert torch.equal(item["pan_seg"], torch.from_numpy(r["pan"]))
                    assert [s["iscrowd"] for s in item["segments_info"]] == [s["iscrowd"] for s in r["segments"]]
    assert P.prepare(kind, src, root) == {"written": 0, "skipped": first["written"] + first["skipped"]}
    assert _snapshot(tmp_path / "dl") == before


def test_ade20k_full_mapping_and_resize(tmp_path):
    recs = write_raw("ade20k-full", tmp_path / "dl", big=(520, 530), splits=("val",))
    before = _snapshot(tmp_path / "dl")
    root = tmp_path / "datasets"
    P.prepare("ade20k-full", tmp_path / "dl", root)  # SRC may also be the parent folder
    ds = get_dataset("ade847", root=root)
    assert len(ds) == 2
    for i, r in enumerate(recs):
        raw = r["raw"]
        h, w = raw.shape
        if min(h, w) > 512:  # short side 512, nearest neighbour at floor(dst * in / out)
            size = (512, round(w / h * 512))
            raw = raw[(np.arange(size[0]) * h // size[0])[:, None], (np.arange(size[1]) * w // size[1])[None]]
        want = _map(raw, ADE_FULL, 65535)
        item = ds[i]
        assert item["image"].shape[1:] == want.shape
        assert torch.equal(item["sem_seg"], torch.from_numpy(want))
    assert ds[0]["sem_seg"].shape == (512, 522)
    assert np.array(Image.open(ds.files[0][1])).dtype == np.uint16
    assert _snapshot(tmp_path / "dl") == before


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    write_raw("ade20k", tmp_path / "dl", num_images=3)
    src, root = tmp_path / "dl/ADEChallengeData2016", tmp_path / "datasets"
    real_save, calls = Image.Image.save, []

    def flaky_save(self, fp, *a, **kw):
        calls.append(fp)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        P.prepare("ade20k", src, root)
    monkeypatch.setattr(Image.Image, "save", real_save)
    out = root / "ADEChallengeData2016/annotations_detectron2/validation"
    assert sorted(p.name for p in out.iterdir()) == ["ADE_val_00000001.png"]  # no partial / temp file left
    assert P.prepare("ade20k", src, root) == {"written": 2, "skipped": 1}
    (out / "ADE_val_00000002.png").unlink()
    assert P.prepare("ade20k", src, root) == {"written": 1, "skipped": 2}


def test_images_are_linked_not_moved(tmp_path):
    write_raw("coco-stuff", tmp_path / "dl")
    root = tmp_path / "datasets"
    P.prepare("coco-stuff", tmp_path / "dl/coco", root)
    assert (root / "coco/val2017").is_symlink()
    assert (root / "coco/val2017").resolve() == (tmp_path / "dl/coco/val2017").resolve()
    write_raw("pcontext", tmp_path / "dl")
    P.prepare("pcontext", tmp_path / "dl/VOC2010", root)
    img = next((root / "pcontext/val/image").iterdir())
    assert img.read_bytes() == (tmp_path / "dl/VOC2010/JPEGImages" / img.name).read_bytes()


def test_cli_prepare_and_errors(tmp_path, capsys):
    write_raw("voc", tmp_path / "dl")
    assert cli.main(["prepare", "voc", str(tmp_path / "dl"), "--root", str(tmp_path / "root")]) == 0
    assert "wrote 2 files" in capsys.readouterr().out
    assert len(get_dataset("voc20", root=tmp_path / "root")) == 2
    assert cli.main(["prepare", "ade20k", str(tmp_path / "dl"), "--root", str(tmp_path / "root")]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["prepare", "cityscapes", str(tmp_path / "nope")]) == 2
    with pytest.raises(FileNotFoundError, match="stuffthingmaps"):
        P.prepare("coco-stuff", tmp_path / "dl", tmp_path / "root")
    with pytest.raises(KeyError, match="known"):
        P.prepare("voc2007", tmp_path / "dl", tmp_path / "root")


def test_coco_panoptic_json_is_linked_with_contiguous_ids(tmp_path):
    recs = write_raw("coco-panoptic", tmp_path / "dl")
    root = tmp_path / "datasets"
    P.prepare("coco-panoptic", tmp_path / "dl/coco", root)
    js = json.loads((root / "coco/annotations/panoptic_val2017.json").read_text())
    assert len(js["categories"]) == 133
    ds = get_dataset("coco-panoptic", root=root)
    assert ds.thing_ids == list(range(80))
    item = ds[0]
    for seg, raw in zip(item["segments_info"], recs[0]["segments"]):
        assert seg["category_id"] == _pan_contiguous(raw["category_id"])
        assert seg["isthing"] == (raw["category_id"] in COCO_THINGS)


def test_coco_object_from_stuffthingmaps_like_cvt_coco_object(tmp_path):
    recs = write_raw("coco-stuff", tmp_path / "dl")
    root = tmp_path / "datasets"
    assert cli.main(["prepare", "coco-object", str(tmp_path / "dl/coco"), "--root", str(root),
                     "--from-stuffthingmaps"]) == 0
    ds = get_dataset("coco-object", root=root)
    # GroupViT's table: raw k (0-based) of a thing -> its rank + 1; stuff, unused and 255 -> 0
    table = {c - 1: i + 1 for i, c in enumerate(COCO_THINGS)}
    for i, r in enumerate(recs):
        assert torch.equal(ds[i]["sem_seg"], torch.from_numpy(_map(r["stuffmap"], table, 0)))
    assert cli.main(["prepare", "voc", str(tmp_path / "dl"), "--from-stuffthingmaps"]) == 2
