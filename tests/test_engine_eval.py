"""The evaluation engine: batched inference, the evaluation loop against per-image
references, the panoptic path, vocabularies, and torchrun sharding."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vocabseg.cli import main as cli_main
from vocabseg.data import get_dataset
from vocabseg.testing.synthetic import write_benchmark
from vocabseg.engine import inference
from vocabseg.engine.inference.batched import infer_batch
from vocabseg.engine.evaluation.evaluate import dataset_vocabulary, evaluate
from vocabseg.engine.evaluation.mask_ap import detections, gt_instances, mask_ap
from vocabseg.engine.evaluation.metrics import PanopticStats
from vocabseg.registry import get_spec
from vocabseg.protocol import Protocol
from vocabseg.vocab import Vocabulary

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import colour_model_for, evaluate_all, fake_instances, fake_panoptic, patched  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("datasets")
    write_benchmark("voc21", r, num_images=6)
    write_benchmark("ade150", r, num_images=3)
    write_benchmark("coco-panoptic", r, num_images=4)
    return r


def _images(ds, n):
    return [ds[i]["image"].float() / 255 for i in range(n)]


@pytest.mark.parametrize("preset", ["segclip-tiny", "san-tiny"])
def test_batched_inference_equals_per_image_inference(root, preset):
    model = get_spec(preset).build()
    if preset == "san-tiny":     # whole-image protocol at a small size
        model.protocol = Protocol(short_side=64, max_side=128, mode="whole", size_divisibility=32)
    ds = get_dataset("voc21", root=root)
    vocab = ds.vocabulary
    text = model.text_encoder()(vocab)
    images = _images(ds, 2) + [torch.rand(3, 40, 90)]           # a third size: its own group
    single = [inference.infer(model, im, text, vocab) for im in images]
    one = infer_batch(model, images, text, vocab, max_crops=1)
    many = infer_batch(model, images, text, vocab, max_crops=8)
    for s, a, b, im in zip(single, one, many, images):
        assert s.shape == (len(vocab), *im.shape[-2:])
        assert torch.equal(s, a)                                  # one crop per pass: bit-identical
        assert torch.allclose(s, b, atol=1e-5)


def test_evaluate_matches_a_per_image_reference(root):
    torch.manual_seed(0)
    model = get_spec("segclip-tiny").build()
    ds = get_dataset("voc21", root=root)
    result = evaluate(model, ds, batch_size=3, workers=0, progress=False)
    assert model.bg_thresh == 0.80                                # set_dataset("voc21") was called
    vocab = ds.vocabulary
    text = model.text_encoder()(vocab)
    c = len(vocab)
    conf = np.zeros((c, c), np.int64)
    for i in range(len(ds)):
        item = ds[i]
        pred = inference.infer(model, item["image"].float() / 255, text, vocab).argmax(0).numpy().ravel()
        gt = item["sem_seg"].numpy().ravel()
        keep = gt != 255
        np.add.at(conf, (gt[keep], pred[keep]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    in_gt = conf.sum(1) > 0
    assert result["miou_gt"] == pytest.approx(100 * np.mean(tp[in_gt] / union[in_gt]))
    assert result["miou_any"] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]))
    assert result["pacc"] == pytest.approx(100 * tp.sum() / conf.sum())
    assert result["images"] == 6 and result["vocabulary"] == "default" and result["templates"] == "single"
    assert set(result["per_class_iou"]) == set(vocab.names)
    json.dumps(result)                                            # the CLI writes it as JSON
    limited = evaluate(model, ds, batch_size=3, workers=0, progress=False, limit=2)
    assert limited["images"] == 2 and limited["pixels"] < result["pixels"]


def test_vocabulary_convention_per_family(root):
    ade, voc = get_dataset("ade150", root=root), get_dataset("voc21", root=root)
    san, tf = get_spec("san-tiny").convention, get_spec("maskclip-tiny").convention   # each method's spec
    vocab, used = dataset_vocabulary(ade, "auto", san)
    assert used == "san" and vocab.names == ade.vocabulary_for("san").names
    assert dataset_vocabulary(voc, "auto", san)[1] == "default"         # voc21 has no SAN list
    assert dataset_vocabulary(ade, "auto", tf)[1] == "tf"
    with pytest.raises(ValueError, match="has no 'san' class names"):
        dataset_vocabulary(voc, "san")
    model = get_spec("san-tiny").build()
    with pytest.raises(ValueError, match="vocabulary class 'kitten' is not a class of ade150"):
        evaluate(model, ade, vocab=Vocabulary.parse("wall; kitten"), progress=False)


def test_a_subset_vocabulary_remaps_labels_and_segments(root):
    from vocabseg.engine.evaluation.subset import with_vocabulary
    ds = get_dataset("coco-panoptic", root=root)
    item = ds[0]
    present = sorted({s["category_id"] for s in item["segments_info"]})
    keep = present[:2]
    names = ds.vocabulary.names
    vocab = Vocabulary.parse("; ".join(names[c].upper() for c in reversed(keep)))   # any case, any order
    sub = with_vocabulary(ds, vocab)
    got = sub[0]
    assert sub.num_classes == 2 and with_vocabulary(ds, ds.vocabulary_for("fcclip")) is ds
    for new, old in enumerate(reversed(keep)):
        assert torch.equal(got["sem_seg"] == new, item["sem_seg"] == old)
    dropped = [s["id"] for s in item["segments_info"] if s["category_id"] not in keep]
    assert all(not (got["pan_seg"] == i).any() for i in dropped)                   # now VOID
    assert sorted(s["category_id"] for s in got["segments_info"]) == sorted(
        1 - keep.index(s["category_id"]) for s in item["segments_info"] if s["category_id"] in keep)
    assert ((got["sem_seg"] == 255) == ~((item["sem_seg"] == keep[0]) | (item["sem_seg"] == keep[1]))).all()
    with pytest.raises(ValueError, match="'unicorn' is not a class of coco-panoptic"):
        with_vocabulary(ds, Vocabulary.parse("person; unicorn"))


def test_a_model_with_its_own_postprocessing_is_evaluated_through_it(root):
    """Mask-classification models resize masks before combining them (``classify_at``):
    evaluation (batched or not) must go through that path."""
    ds = get_dataset("coco-panoptic", root=root)
    model = colour_model_for(ds)
    model.tasks = ("semantic",)
    plain = evaluate(model, ds, workers=0, progress=False, limit=2)
    calls = []

    def classify_at(features, text, vocab, crop=None, size=None, rows=None):   # a stand-in that inverts the scores
        calls.append(tuple(size))
        out = -model.classify(features, text, vocab)[..., : crop[0], : crop[1]]
        out = torch.nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out[:, :, rows[0]:rows[1]] if rows else out
    model.classify_at = classify_at
    inverted = evaluate(model, ds, batch_size=2, workers=0, progress=False, limit=2)
    assert len(calls) == 2 and plain["miou_gt"] > 60 and inverted["miou_gt"] < 5


def test_panoptic_evaluation_pq_and_mask_ap(root):
    ds = get_dataset("coco-panoptic", root=root)
    model = colour_model_for(ds)
    with patched(inference, panoptic=fake_panoptic, instances=fake_instances):
        result = evaluate(model, ds, batch_size=2, workers=0, progress=False)
        stats, gts, dets = PanopticStats(ds.num_classes), [], []      # the same predictions, directly
        for i in range(len(ds)):
            item = ds[i]
            feats = inference.encode(model, item["image"].float() / 255)
            pan = fake_panoptic(model, feats, None, ds.vocabulary)
            stats.update(item["pan_seg"], item["segments_info"], pan["pan_seg"], pan["segments"])
            gts.append(gt_instances(i, item["pan_seg"], item["segments_info"], ds.thing_ids))
            dets += detections(i, fake_instances(model, feats, None, ds.vocabulary))
    want = stats.metrics(ds.thing_ids, ds.vocabulary.names)
    assert result["pq"] == {k: want[k] for k in ("all", "things", "stuff")}
    assert result["mask_ap"] == mask_ap(gts, dets, ds.thing_ids, ds.vocabulary.names)
    assert result["miou_gt"] > 60                       # colours are recognised: labels line up
    assert 0 < result["pq"]["all"]["pq"] < 100 and result["pq"]["things"]["n"] > 0
    assert result["mask_ap"]["ap"] is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vocabseg.checkpoint import save_checkpoint
    torch.manual_seed(0)
    return save_checkpoint(get_spec("segclip-tiny").build(), tmp_path_factory.mktemp("ckpt") / "segclip-tiny")


def test_eval_command_writes_named_metrics(root, checkpoint, tmp_path, capsys):
    code = cli_main(["eval", "--model", str(checkpoint), "--dataset", "voc21", "ade150", "--root", str(root),
                     "--out", str(tmp_path), "--limit", "2", "--workers", "0", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "miou_gt" in text and "miou_any" in text and "mean over the" in text
    for name in ("voc21", "ade150"):
        r = json.loads((tmp_path / f"eval_segclip-tiny_{name}.json").read_text())
        assert r["images"] == 2 and r["dataset"] == name and r["model"] == "segclip-tiny"
        assert {"miou_gt", "miou_any", "fwiou", "macc", "pacc", "per_class_iou"} <= set(r)
        assert len(r["per_class_iou"]) == get_dataset(name, root=root).num_classes
    for args, message in ((["--dataset", "nope"], "unknown dataset 'nope'"),
                          (["--dataset", "voc21", "--limit", "0"], "--limit must be at least 1"),
                          (["--dataset", "pc59"], "vocabseg prepare pcontext"),
                          (["--dataset", "voc21", "--vocab-convention", "san"], "has no 'san' class names"),
                          (["--dataset", "voc21", "--templates", "many"], "unknown template set 'many'")):
        assert cli_main(["eval", "--model", str(checkpoint), "--root", str(root), "--workers", "0", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.dist
def test_torchrun_two_processes_give_the_single_process_numbers(root, checkpoint, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                            # as each torchrun process runs
    try:
        single = evaluate_all(str(root), str(checkpoint), str(tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "engine_helpers.py"), str(root), str(checkpoint), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0].pop("world_size") == ranks[1].pop("world_size") == 2
    single = json.loads(json.dumps(single))
    assert ranks[0] == single                           # every number, every class, PQ and AP
    assert ranks[1]["coco-panoptic"] == single["coco-panoptic"]
    assert single["voc21"]["pixels"] > 0 and single["coco-panoptic"]["pq"]["all"]["n"] > 0
