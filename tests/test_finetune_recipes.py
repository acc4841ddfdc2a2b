"""configs/finetune-*.yaml run as documented (tiny presets, tiny sizes): start from a saved
checkpoint, train on a folder's train split with accumulation, evaluate on its val split
('same'), unseen classes reported apart."""
import json
from pathlib import Path

import pytest
import torch

from vocabseg.checkpoint import save_checkpoint
from vocabseg.cli import main as cli_main
from vocabseg.engine.training.train import seen_unseen
from vocabseg.registry import get_spec, load_checkpoint
from vocabseg.testing.owndata import write_folder

ROOT = Path(__file__).resolve().parents[1]
SHRINK = {"san": ["data.transform={crop_size: 64, short_sizes: [64, 80], max_size: 256}",
                  "train.activation_checkpointing=true", "eval.protocol={short_side: 64, max_side: 256, mode: whole}"],
          "fcclip": ["data.transform={image_size: 64, min_scale: 0.8, max_scale: 1.25}",
                     "eval.protocol={short_side: 64, max_side: 256, mode: whole, size_divisibility: 32}"],
          "catseg": ["data.transform={short_sizes: [64], max_size: 256, crop_size: 64}"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["san", "fcclip", "catseg"])
def test_finetune_recipe_on_a_folder(tmp_path, family):
    write_folder(tmp_path / "d", num_images=10, val=2, size=(64, 64))
    torch.manual_seed(3)
    start = save_checkpoint(get_spec(f"{family}-tiny").build(), tmp_path / "start")
    out = tmp_path / "run"
    code = cli_main(["train", str(ROOT / f"configs/finetune-{family}.yaml"), f"model.preset={family}-tiny",
                     f"model.weights={start}", f"data.train=folder:{tmp_path / 'd'}", "data.workers=0",
                     "data.unseen=[sky]", "train.batch_size=4", "train.accumulate=2", "schedule.iterations=2",
                     *([] if family == "catseg" else ["schedule.warmup_iters=0"]), "train.eval_every=1", "train.checkpoint_every=0", "eval.batch_size=2",
                     *SHRINK[family], "--output", str(out), "--no-progress"])
    assert code == 0
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x["eval"]["folder-d"] for x in log if "eval" in x]
    assert len(evals) == 2 and all(e["images"] == 2 for e in evals)
    result = json.loads((out / "eval" / "iter_00000002_folder-d.json").read_text())
    want = seen_unseen(result["per_class_iou"], ["sky"])
    assert {k: evals[-1][k] for k in want} == want and want["miou_seen"] is not None
    assert "sky" in result["per_class_iou"] and len(result["per_class_iou"]) == 6     # evaluated on all classes
    trained = load_checkpoint(out / "model").state_dict()
    begun = load_checkpoint(start).state_dict()
    changed = [k for k in begun if not torch.equal(begun[k], trained[k])]
    assert changed and len(changed) < len(begun)       # started from the checkpoint; frozen CLIP unchanged


@pytest.mark.slow
def test_fcclip_trains_on_coco_instances_segments(tmp_path):
    from vocabseg.testing.owndata import write_coco
    write_coco(tmp_path / "c", "instances", num_images=4, size=(64, 64))
    out = tmp_path / "run"
    code = cli_main(["train", str(ROOT / "configs/finetune-fcclip.yaml"), "model.preset=fcclip-tiny",
                     f"data.train=coco:{tmp_path / 'c' / 'instances.json'}", "data.workers=0", "train.batch_size=2",
                     "train.accumulate=2", "schedule.iterations=2", "schedule.warmup_iters=0", "train.log_every=1",
                     "train.checkpoint_every=0", "eval.datasets=[same]", "eval.batch_size=2", *SHRINK["fcclip"],
                     "--output", str(out), "--no-progress"])
    assert code == 0
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in log if "loss" in x] == [1, 2] and all(x["loss"] > 0 for x in log if "loss" in x)
    result = json.loads((out / "eval" / "iter_00000002_coco-instances.json").read_text())
    assert result["images"] == 4 and list(result["per_class_iou"])[:2] == ["background", "grass"]
