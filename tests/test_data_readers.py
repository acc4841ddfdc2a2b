import numpy as np
import pytest
import torch
from scipy import ndimage

from vocabseg.data import BENCHMARKS, datasets_root, get_dataset
from vocabseg.testing.synthetic import GREY, class_color, write_benchmark

COUNTS = {"voc20": 20, "voc21": 21, "pc59": 59, "pc60": 60, "pc459": 459, "ade150": 150, "ade847": 847,
          "coco-stuff": 171, "coco-object": 81, "cityscapes": 19, "coco-panoptic": 133, "ade-panoptic": 150}


def _colour_matches_label(image, labels):
    """Interior pixels (3x3 neighbourhood of one label) have the colour of their class."""
    img = image.permute(1, 2, 0).numpy().astype(int)
    checked = 0
    for c in np.unique(labels):
        inner = ndimage.binary_erosion(labels == c, iterations=2)
        if not inner.any():
            continue
        want = np.array(GREY if c < 0 else class_color(int(c)))
        err = np.abs(img[inner] - want).mean()
        assert err < 12, (c, err)
        checked += inner.sum()
    assert checked > 0.3 * labels.size


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_reader_yields_written_pairs(name, tmp_path):
    assert BENCHMARKS[name].num_classes == COUNTS[name]
    truth = write_benchmark(name, tmp_path, num_images=3, seed=1)
    ds = get_dataset(name, root=tmp_path)
    assert len(ds) == 3 and ds.num_classes == COUNTS[name] == len(ds.vocabulary)
    for i, t in enumerate(truth):
        item = ds[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 64)
        assert item["sem_seg"].dtype == torch.long
        assert torch.equal(item["sem_seg"], torch.from_numpy(t["sem_seg"]))
        assert str(item["image_id"]) == str(t["image_id"])
        _colour_matches_label(item["image"], t["labels"])
        labelled = t["labels"] >= 0
        assert (item["sem_seg"].numpy()[~labelled] == ds.ignore_index).all() or name == "pc60"
        if ds.task == "panoptic":
            assert torch.equal(item["pan_seg"], torch.from_numpy(t["pan_seg"]))
            assert item["segments_info"] == t["segments_info"]
            for seg in item["segments_info"]:  # sem_seg painted from segments
                assert (item["sem_seg"][item["pan_seg"] == seg["id"]] == seg["category_id"]).all()
    with pytest.raises(IndexError):
        ds[3]


def test_label_encodings_on_disk(tmp_path):
    write_benchmark("voc21", tmp_path, num_images=2)
    write_benchmark("pc59", tmp_path, num_images=2)
    write_benchmark("pc459", tmp_path, num_images=2)
    v21, v20 = get_dataset("voc21", root=tmp_path), get_dataset("voc20", root=tmp_path)
    for i in range(2):
        a, b = v21[i]["sem_seg"], v20[i]["sem_seg"]
        assert torch.equal(b, torch.where((a == 0) | (a == 255), 255, a - 1))
    p59, p60 = get_dataset("pc59", root=tmp_path), get_dataset("pc60", root=tmp_path)
    for i in range(2):
        a = p59[i]["sem_seg"]
        assert torch.equal(p60[i]["sem_seg"], torch.where(a == 255, 0, a + 1))
    from PIL import Image
    ds = get_dataset("pc459", root=tmp_path)
    raw = np.array(Image.open(ds.files[0][1]))
    assert raw.dtype == np.uint16 and ds.ignore_index == 65535
    assert (ds[0]["sem_seg"] == 65535).any()


def test_panoptic_metadata(tmp_path):
    write_benchmark("coco-panoptic", tmp_path, num_images=2)
    ds = get_dataset("coco-panoptic", root=tmp_path)
    assert len(ds.thing_ids) == 80 and ds.thing_ids == list(range(80)) and len(ds.stuff_ids) == 53
    assert any(s["iscrowd"] for s in ds[1]["segments_info"])
    write_benchmark("ade-panoptic", tmp_path, num_images=1)
    assert len(get_dataset("ade-panoptic", root=tmp_path).thing_ids) == 100


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("VOCABSEG_DATASETS")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert datasets_root() == tmp_path / "d2"
    write_benchmark("ade150", tmp_path / "d2", num_images=1)
    assert len(get_dataset("ade150")) == 1
    monkeypatch.setenv("VOCABSEG_DATASETS", str(tmp_path / "ours"))
    assert datasets_root() == tmp_path / "ours"
    monkeypatch.delenv("VOCABSEG_DATASETS")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert str(datasets_root()) == "datasets"


def test_missing_dataset_error_names_paths_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("ade150", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "ADEChallengeData2016/images/validation") in msg
    assert str(tmp_path / "ADEChallengeData2016/annotations_detectron2/validation") in msg
    assert "vocabseg prepare ade20k" in msg
    with pytest.raises(FileNotFoundError, match="vocabseg prepare coco-panoptic"):
        get_dataset("coco-panoptic", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="pcontext_full/train/label"):
        get_dataset("pc459", "train", root=tmp_path)
    with pytest.raises(KeyError, match="unknown dataset"):
        get_dataset("voc99", root=tmp_path)
    with pytest.raises(KeyError, match="splits"):
        get_dataset("voc20", "test", root=tmp_path)


def test_missing_image_of_a_label_is_reported(tmp_path):
    write_benchmark("coco-stuff", tmp_path, num_images=2)
    ds = get_dataset("coco-stuff", root=tmp_path)
    ds.files[0][0].unlink()
    with pytest.raises(FileNotFoundError, match=ds.files[0][0].name):
        get_dataset("coco-stuff", root=tmp_path)


def test_conventions_and_train_split(tmp_path):
    write_benchmark("coco-stuff", tmp_path, split="train", num_images=2)
    ds = get_dataset("coco-stuff", "train", root=tmp_path)
    assert len(ds) == 2
    assert len(ds.vocabulary_for("san")) == len(ds.vocabulary_for("fcclip")) == 171
    write_benchmark("coco-panoptic", tmp_path, split="train", num_images=2)
    assert len(get_dataset("coco-panoptic", "train", root=tmp_path)) == 2


def test_synthetic_is_deterministic_and_learnable(tmp_path):
    for d in ("a", "b"):
        write_benchmark("cityscapes", tmp_path / d, num_images=2, seed=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    # a nearest-mean-colour classifier fitted on seed 0 labels held-out seed 5 images well above chance
    write_benchmark("ade150", tmp_path / "train", split="train", num_images=6, seed=0)
    write_benchmark("ade150", tmp_path / "train", split="val", num_images=3, seed=5)
    train, val = get_dataset("ade150", "train", root=tmp_path / "train"), get_dataset("ade150", root=tmp_path / "train")
    sums, counts = {}, {}
    for item in train:
        img, lab = item["image"].permute(1, 2, 0).reshape(-1, 3).float(), item["sem_seg"].reshape(-1)
        for c in lab.unique().tolist():
            if c != 255:
                sums[c] = sums.get(c, 0) + img[lab == c].sum(0)
                counts[c] = counts.get(c, 0) + (lab == c).sum()
    classes = sorted(sums)
    means = torch.stack([sums[c] / counts[c] for c in classes])
    correct = total = 0
    for item in val:
        img, lab = item["image"].permute(1, 2, 0).reshape(-1, 3).float(), item["sem_seg"].reshape(-1)
        pred = torch.tensor(classes)[torch.cdist(img, means).argmin(1)]
        keep = lab != 255
        correct += (pred[keep] == lab[keep]).sum().item()
        total += keep.sum().item()
    assert len(classes) >= 3 and correct / total > 0.9
