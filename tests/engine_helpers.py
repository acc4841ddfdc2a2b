"""Helpers for the engine tests, and the torchrun worker they launch.

``ColourModel`` recognises the synthetic datasets' classes by their colours
(``vocabseg.data.synthetic.class_color``): a deterministic, imperfect model
whose semantic, panoptic and instance outputs exercise every evaluation path.

    python -m torch.distributed.run --nproc_per_node 2 tests/engine_helpers.py ROOT CKPT OUT
evaluates the colour model on coco-panoptic and, with ``vocabseg eval``, the
checkpoint CKPT on voc21, and writes OUT/rank<r>.json.
"""
import json
import sys
from pathlib import Path
from contextlib import contextmanager

import torch
import torch.nn as nn

from vocabseg.testing.synthetic import class_color
from vocabseg.protocol import Protocol
from vocabseg.model import SegModel


class _Text:
    def __call__(self, vocab):
        return torch.zeros(len(vocab.prompts), 3)


class ColourModel(SegModel):
    """Scores = minus the distance of each pixel's colour to each class's colour."""
    tasks = ("semantic", "panoptic", "instance")

    def __init__(self, colour_ids, things=()):
        super().__init__()
        self.colours = nn.Parameter(torch.tensor([class_color(int(c)) for c in colour_ids], dtype=torch.float32) / 255)
        self.things = set(things)
        self.protocol = Protocol(short_side=48, max_side=256, mode="whole", size_divisibility=1,
                                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.config = {"preset": "colour"}

    def text_encoder(self, template_set=None):
        return _Text()

    def encode_image(self, images):
        return images

    def classify(self, features, text, vocab):
        d = (features[:, None] - self.colours[None, :, :, None, None]).pow(2).sum(2)   # [B, C, H, W]
        return -d


def fake_panoptic(model, feats, text, vocab):
    """One segment per predicted class (ids class + 1), as a merging panoptic head would give."""
    from vocabseg.engine.inference.image import scores
    label = scores(model, feats, text, vocab).argmax(0)
    pan = label + 1
    segments = [{"id": int(c) + 1, "category_id": int(c), "isthing": int(c) in model.things}
                for c in torch.unique(label).tolist()]
    return {"pan_seg": pan, "segments": segments}


def fake_instances(model, feats, text, vocab):
    """One instance per predicted thing class, scored by its share of the image."""
    from vocabseg.engine.inference.image import scores
    label = scores(model, feats, text, vocab).argmax(0)
    things = [c for c in torch.unique(label).tolist() if c in model.things]
    masks = torch.stack([label == c for c in things]) if things else torch.zeros(0, *label.shape, dtype=torch.bool)
    return {"masks": masks, "scores": masks.flatten(1).float().mean(1), "labels": torch.tensor(things, dtype=torch.long)}


@contextmanager
def patched(module, **attrs):
    """Set module attributes for the duration of a block (restored or removed after)."""
    missing = object()
    saved = {k: getattr(module, k, missing) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                delattr(module, k)
            else:
                setattr(module, k, v)


def colour_model_for(dataset):
    from vocabseg.data import idmaps
    if dataset.name == "coco-panoptic":
        return ColourModel(idmaps.COCO_PANOPTIC_IDS, dataset.thing_ids)
    raise ValueError(dataset.name)


def evaluate_all(root: str, checkpoint: str, out: str, read: bool = True) -> dict:
    """The numbers the distributed test compares: the colour model on coco-panoptic
    (engine API), then ``vocabseg eval`` of a segclip-tiny checkpoint on voc21
    (batches of 2 images, sliding windows); the CLI's JSON is read back (``read``:
    process 0, which wrote it)."""
    from vocabseg.cli import main
    from vocabseg.data import get_dataset
    from vocabseg.engine import inference
    from vocabseg.engine.evaluation.evaluate import evaluate
    pan = get_dataset("coco-panoptic", root=root)
    with patched(inference, panoptic=fake_panoptic, instances=fake_instances):
        result = {"coco-panoptic": evaluate(colour_model_for(pan), pan, batch_size=2, workers=1, progress=False)}
    code = main(["eval", "--model", checkpoint, "--dataset", "voc21", "--root", root, "--out", out,
                 "--batch-size", "2", "--workers", "1", "--no-progress", "--device", "cpu"])
    assert code == 0
    if read:
        result["voc21"] = json.loads((Path(out) / f"eval_{Path(checkpoint).name}_voc21.json").read_text())
    for r in result.values():
        r.pop("seconds"), r.pop("world_size")
    return result


if __name__ == "__main__":
    from vocabseg.engine import distributed as D
    torch.set_num_threads(1)
    info = D.init("cpu")
    world = D.world_size()
    result = evaluate_all(*sys.argv[1:4], read=info.rank == 0)
    with open(f"{sys.argv[3]}/rank{info.rank}.json", "w") as f:
        json.dump({"world_size": world, **result}, f)
