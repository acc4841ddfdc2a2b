"""Where ONNX Runtime and eager fp32 score maps differ, for a model with region groups
(SegCLIP; random weights):

    python benchmarks/export_ties.py [PRESET] [--image HxW] [--threads N]

Prints each ``encode_image`` output's max abs difference (over the image's windows),
how many window pixels fall in another region (``group_map`` of the window) under ONNX
Runtime than eagerly, the max abs difference of the window scores (``classify``) on those
pixels and on all the others, and that of the image's score maps.
"""
import argparse
import sys
import tempfile

import numpy as np
import torch

import vocabseg
from vocabseg.engine import inference
from vocabseg.engine.inference.image import ImageFeatures
from vocabseg.export import export
from vocabseg.export.tree import flatten
from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary

from export_check import image_options, parse     # run as a script: benchmarks/ is on sys.path

VOCAB = "wall; floor; ceiling; bed; window; cabinet; person; door; table; plant"


def outputs(feats) -> list[torch.Tensor]:
    """Every tensor of every window's ``encode_image`` output, in ``flatten`` order."""
    per_window = []
    for f in feats.features:
        tensors = []
        flatten(f, tensors)
        per_window.append(tensors)
    return [torch.cat([w[i].flatten().float() for w in per_window]) for i in range(len(per_window[0]))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset", nargs="?", default="segclip-vit-b16")
    image_options(p)
    args, size = parse(p, argv)
    img = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    torch.manual_seed(args.seed)
    model = get_spec(args.preset).build(clip_weights=None)
    if not model.region_groups:
        raise SystemExit(f"{args.preset} has no region groups")
    with tempfile.TemporaryDirectory() as tmp:
        export(model, tmp, sizes=sorted(set(inference.encode(model, x).padded)))
        onnx, eager = vocabseg.load(tmp), vocabseg.load(tmp, runtime="torch")
        fo, fe = inference.encode(onnx.model, x), inference.encode(eager.model, x)
        print(f"{args.preset}, image {size[0]}x{size[1]}, {len(fe.features)} windows, "
              f"{torch.get_num_threads()} threads, random weights (seed {args.seed})\n")
        print("| encode_image output | shape (one window) | max abs diff | max abs value |")
        print("|---|---|---|---|")
        spec_shapes = []
        flatten(fe.features[0], spec_shapes)
        for i, (a, b) in enumerate(zip(outputs(fo), outputs(fe))):
            print(f"| {i} | {tuple(spec_shapes[i].shape)} | {float((a - b).abs().max()):.2g} | "
                  f"{float(b.abs().max()):.3g} |")
        vocab = Vocabulary.parse(VOCAB)
        text = eager.model.text_encoder()(vocab)
        flipped, at, elsewhere = 0, 0.0, 0.0
        with torch.no_grad():
            for pad, o, e in zip(fe.padded, fo.features, fe.features):
                one = lambda f: ImageFeatures(pad, pad, [(0, 0, *pad)], [pad], [f])    # noqa: E731
                flips = onnx.model.group_map(one(o)) != eager.model.group_map(one(e))
                diff = (onnx.model.classify(o, text, vocab) - eager.model.classify(e, text, vocab)).abs()[0].amax(0)
                flipped += int(flips.sum())
                at = max(at, float(diff[flips].max()) if flips.any() else 0.0)
                elsewhere = max(elsewhere, float(diff[~flips].max()))
        a = onnx(img, VOCAB, return_scores=True).scores
        b = eager(img, VOCAB, return_scores=True).scores
        diff = (a - b).abs().amax(0)
        print(f"\nwindow pixels in another region: {flipped}; max abs window score difference there {at:.2g}, "
              f"elsewhere {elsewhere:.2g}")
        print(f"image scores: max abs difference {float(diff.max()):.2g}, pixels > 1e-4: {int((diff > 1e-4).sum())} "
              f"/ {diff.numel()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
