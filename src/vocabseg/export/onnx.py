"""Export a model's image side (``encode_image`` on one preprocessed window) to ONNX.

An export folder holds the model's vocabseg checkpoint (``model.safetensors``,
``config.json``: the PyTorch head), ``image.onnx`` and ``export.json`` (how to
rebuild ``encode_image``'s output from the ONNX outputs, and the input sizes the
file accepts: any, or the one it was exported at).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..errors import UserError
from ..files import atomic_write
from ..speed import plain_paths
from .tree import flatten, mark_input_sides

ONNX_FILE, META_FILE = "image.onnx", "export.json"
TOLERANCE = 1e-4         # max abs difference ONNX Runtime vs eager accepted at export time


def need_onnx():
    """Import onnxruntime, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export and runtime need onnx and onnxruntime: pip install 'vocabseg[export]'") from None
    return onnxruntime


class Flat(torch.nn.Module):
    """``model.encode_image`` with its output flattened into a tuple of tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        tensors = []
        flatten(self.model.encode_image(x), tensors)
        return tuple(tensors)


def probe_sizes(protocol) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two window input sizes: the one exported at, and another to check dynamic sides with."""
    if protocol.mode == "slide":
        return (protocol.window, protocol.window), (protocol.window, protocol.window)
    d = max(1, protocol.size_divisibility)
    s = -(-protocol.short_side // d) * d
    return (s, s + 2 * d), (s + d, s + 4 * d)


def describe(model, size) -> tuple[dict, list]:
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    tensors = []
    with torch.no_grad():
        spec = flatten(model.encode_image(x), tensors)
    return mark_input_sides(spec, size), [t.detach() for t in tensors]


def run_onnx(session, x: torch.Tensor) -> list[torch.Tensor]:
    name = session.get_inputs()[0].name
    return [torch.from_numpy(o) for o in session.run(None, {name: x.detach().cpu().numpy()})]


def max_diff(a: list, b: list) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)


def export(model, out: str | Path, overwrite: bool = False) -> dict:
    """Write ``out``/{model checkpoint, image.onnx, export.json}; returns the export.json content."""
    ort = need_onnx()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty: choose a new folder or pass --overwrite")
    name = model.config.get("preset", type(model).__name__)
    model = model.eval().float().cpu()
    a, b = probe_sizes(model.protocol)
    spec, ref_a = describe(model, a)
    spec_b, ref_b = describe(model, b)
    dynamic = a != b and spec == spec_b
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_FILE
    x = torch.rand(1, 3, *a, generator=torch.Generator().manual_seed(0))
    shapes = ({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},) if dynamic else None
    try:
        with warnings.catch_warnings(), torch.no_grad(), plain_paths():   # no oneDNN-only ops in the graph
            warnings.simplefilter("ignore")
            program = torch.onnx.export(Flat(model).eval(), (x,), dynamo=True, dynamic_shapes=shapes,
                                        input_names=["image"], verbose=False)
    except ImportError:
        raise
    except Exception as e:       # the exporter's failures are many and long: one line naming the model
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{name} cannot be exported to ONNX: {first}") from None
    atomic_write(onnx_path, lambda f: program.save(f.name))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diff = max_diff(run_onnx(session, x), ref_a)
    if dynamic:
        xb = torch.rand(1, 3, *b, generator=torch.Generator().manual_seed(0))
        diff_b = max_diff(run_onnx(session, xb), ref_b)
        dynamic = diff_b <= TOLERANCE
        diff = max(diff, diff_b) if dynamic else diff
    if diff > TOLERANCE:
        onnx_path.unlink()
        raise UserError(f"{name}: the ONNX image side differs from PyTorch by {diff:.2g} (max abs) "
                        f"at input {a[0]}x{a[1]}; not exported")
    save_checkpoint(model, out)
    meta = {"format": "vocabseg-export", "version": 1, "runtime": "onnxruntime", "onnx": ONNX_FILE,
            "preset": name, "outputs": spec, "dynamic_size": dynamic,
            "input_size": None if dynamic else list(a), "checked_sizes": [list(a)] + ([list(b)] if dynamic else []),
            "max_abs_diff": diff}
    atomic_write(out / META_FILE, json.dumps(meta, indent=1))
    return meta
