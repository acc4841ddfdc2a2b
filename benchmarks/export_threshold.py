"""ProxyCLIP's proxy-attention threshold under ONNX Runtime (random weights):

    python benchmarks/export_threshold.py [PRESET] [--threads N] [--seed S]

Exports the VFM tower alone (``vfm_features``) and runs it through ONNX Runtime and
eagerly on one random window, then builds S' (``proxy_attention``'s scaled, mean-shifted
cosines) from both: prints the features' max abs difference, how many of S' entries
change sides of 0 (the keys kept), and the max abs difference of the unit dense features
(``dense_tokens`` from either VFM features) on the query tokens with a changed key set and
on all the others.
"""
import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from vocabseg.export.onnx import need_onnx
from vocabseg.registry import get_spec
from vocabseg.speed import plain_paths


class VFMTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.vfm_features(x)


def scaled_cosines(model, feats: torch.Tensor) -> torch.Tensor:
    """S' of ``proxy_attention`` (before the entries < 0 are dropped)."""
    f = F.normalize(feats.flatten(2), dim=1)
    s = f.transpose(1, 2) @ f
    return (s - s.mean((1, 2), keepdim=True) * model.beta) * model.gamma


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset", nargs="?", default="proxyclip-vit-b16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ort = need_onnx()
    torch.manual_seed(args.seed)
    model = get_spec(args.preset).build(clip_weights=None).eval()
    win = model.protocol.window
    x = torch.randn(1, 3, win, win, generator=torch.Generator().manual_seed(1)) * 0.5
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), plain_paths(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "vfm.onnx")
        program = torch.onnx.export(VFMTower(model).eval(), (x,), dynamo=True, input_names=["image"], verbose=False)
        program.save(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        ref = model.vfm_features(x)
        sa, sb = scaled_cosines(model, got), scaled_cosines(model, ref)
        flips = (sa >= 0) != (sb >= 0)
        ta, tb = (F.normalize(model.dense_tokens(x, f)[0], dim=-1) for f in (got, ref))
    d = (ta - tb).abs().amax(-1)[0]
    rows = flips.any(-1)[0]
    print(f"{args.preset} (VFM {model.vfm_name}), one {win}x{win} window, {torch.get_num_threads()} threads, "
          f"random weights (seed {args.seed})")
    print(f"VFM features: max abs difference {float((got - ref).abs().max()):.2g} (max abs value "
          f"{float(ref.abs().max()):.3g}); S' max abs difference {float((sa - sb).abs().max()):.2g}")
    print(f"S' entries changing sides of 0: {int(flips.sum())} of {flips.numel()}; unit dense features: max abs "
          f"difference {float(d[rows].max()) if rows.any() else 0.0:.2g} on the {int(rows.sum())} query tokens "
          f"concerned, {float(d[~rows].max()):.2g} on the others")
    return 0


if __name__ == "__main__":
    sys.exit(main())
