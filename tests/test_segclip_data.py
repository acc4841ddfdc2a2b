"""Image-caption readers, the superpixel transform, and a short SegCLIP training run."""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.data.captions import (
    CaptionShards, CaptionTransform, CocoCaptions, felzenszwalb, patch_labels, shape_sample, write_shards)


def _samples(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return [shape_sample(rng, size)[:2] for _ in range(n)]


def test_webdataset_shards_round_trip(tmp_path):
    samples = _samples(7)
    write_shards(tmp_path / "shards", samples, per_shard=3)
    ds = CaptionShards(tmp_path / "shards")
    assert len(ds) == 7 and len(ds.shards) == 3
    for i in (0, 4, 6):
        item = ds[i]
        assert item["caption"] == samples[i][1]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == samples[i][0].shape
        buf = io.BytesIO()
        Image.fromarray(samples[i][0].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95)
        assert torch.equal(item["image"], torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1))
    assert ds[4]["file_name"] == "00001.tar/000000004.jpg"
    with pytest.raises(FileNotFoundError, match="no webdataset shards"):
        CaptionShards(tmp_path / "empty_dir_that_is_missing.tar")


def test_coco_captions_both_formats(tmp_path):
    (tmp_path / "train2014").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "train2014" / name)
    karpathy = {"images": [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 1,
         "sentences": [{"raw": "A cat. "}, {"raw": "Two cats."}]},
        {"filepath": "train2014", "filename": "b.jpg", "split": "val", "cocoid": 2, "sentences": [{"raw": "x"}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    ds = CocoCaptions(tmp_path / "dataset_coco.json", tmp_path)
    assert len(ds) == 2 and [ds[i]["caption"] for i in range(2)] == ["A cat.", "Two cats."]
    assert ds[0]["image"].shape == (3, 20, 30)
    official = {"images": [{"id": 7, "file_name": "b.jpg"}], "annotations": [{"image_id": 7, "caption": "a dog"}]}
    (tmp_path / "captions.json").write_text(json.dumps(official))
    ds = CocoCaptions(tmp_path / "captions.json", tmp_path / "train2014")
    assert len(ds) == 1 and ds[0]["caption"] == "a dog" and ds[0]["image_id"] == "7"


def test_patch_labels_mean_then_truncate():
    sp = torch.zeros(4, 4, dtype=torch.long)
    sp[:2, 2:] = 3
    sp[2:, :2] = torch.tensor([[1, 2], [2, 2]])     # mean 1.75 -> 1 (published reduction)
    assert patch_labels(sp, 2).tolist() == [[0, 3], [1, 0]]


def test_caption_transform_crops_image_and_superpixels_alike():
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    image[0, :, 200:] = 255                          # left half black, right half red
    tf = CaptionTransform(size=224, patch=16, scale=(1.0, 1.0))
    torch.manual_seed(0)
    out = tf({"image": image, "caption": "half red", "file_name": "x"})
    assert out["image"].shape == (3, 224, 224) and out["image"].dtype == torch.float32
    assert out["caption"] == "half red" and out["superpixels"].shape == (14, 14)
    # independent: superpixels of the 224-short-side image, same crop (same RNG draw), nearest, patch mean
    from torchvision.transforms import RandomResizedCrop
    small = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((298, 224), Image.LANCZOS)
    torch.manual_seed(0)
    i, j, h, w = RandomResizedCrop.get_params(small, (1.0, 1.0), (3 / 4, 4 / 3))
    sp = felzenszwalb(np.array(small), 224, 0.9, 224)[i:i + h, j:j + w]
    rows = (np.arange(224) * h / 224).astype(int)
    cols = (np.arange(224) * w / 224).astype(int)
    want = sp[rows][:, cols].reshape(14, 16, 14, 16).mean((1, 3)).astype(np.int64)
    assert np.array_equal(out["superpixels"].numpy(), want)
    red = out["image"][0].reshape(14, 16, 14, 16).mean((1, 3)) > 0.5
    labels = out["superpixels"]
    assert red.any() and (~red).any()
    assert not set(labels[red].tolist()) & set(labels[~red].tolist())   # no superpixel crosses the edge


@pytest.mark.slow
def test_short_training_run_segments_above_chance(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learn_synthetic.py"
    spec = importlib.util.spec_from_file_location("learn_synthetic", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from vocabseg.engine.evaluation.evaluate import evaluate
    from vocabseg.registry import get_spec
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # a tiny model: one thread is fastest, and far faster on a loaded machine
    try:
        torch.manual_seed(0)
        untrained = evaluate(get_spec("segclip-tiny").build(), bench.HeldOutShapes(30), workers=0, progress=False)
        out = bench.learn("segclip-tiny", tmp_path, 100, train_images=256)     # the training engine, 100 steps
    finally:
        torch.set_num_threads(threads)
    assert out["last_loss"] < out["first_loss"]
    assert out["miou"] > 2 * out["chance_random"] and out["miou"] > out["chance_constant"] + 15
    assert out["miou"] > untrained["miou_gt"] + 10
