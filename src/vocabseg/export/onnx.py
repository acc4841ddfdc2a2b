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

ONNX_FILE, META_FILE = "image.onnx", "export.json"     # image.onnx: any size; image-HxW.onnx: one
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


def write_onnx(model, name: str, path: Path, size, dynamic: bool, ort):
    """Export ``model``'s flattened ``encode_image`` at input ``size`` to ``path``; the session."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
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
    atomic_write(path, lambda f: program.save(f.name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()     # as many as PyTorch is given
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(session, model, size) -> float:
    """Max abs difference of the ONNX outputs from eager at input ``size`` (inf if ONNX Runtime fails)."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with plain_paths():
        ref = describe(model, size)[1]
    try:
        return max_diff(run_onnx(session, x), ref)
    except Exception:            # a graph that specialised a size: its reshapes fail at another
        return float("inf")


def export(model, out: str | Path, overwrite: bool = False, sizes=None) -> dict:
    """Write ``out``/{model checkpoint, ONNX file(s), export.json}; returns the export.json content.
    One file for any input size where the model allows it (checked at a second size), else
    one file per window input size in ``sizes`` ([(H, W)], default: the protocol's first)."""
    ort = need_onnx()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} exists and is not empty: choose a new folder or pass --overwrite")
    name = model.config.get("preset", type(model).__name__)
    model = model.eval().float().cpu()
    a, b = probe_sizes(model.protocol)
    with plain_paths():
        spec, spec_b = describe(model, a)[0], describe(model, b)[0]
    out.mkdir(parents=True, exist_ok=True)
    files, why = [], "its window size is fixed by the protocol"
    if a != b and spec == spec_b:
        session = write_onnx(model, name, out / ONNX_FILE, a, True, ort)
        diff = max(check(session, model, a), check(session, model, b))
        if diff <= TOLERANCE:
            files = [{"size": None, "onnx": ONNX_FILE, "outputs": spec, "checked_sizes": [list(a), list(b)],
                      "max_abs_diff": diff}]
        else:
            (out / ONNX_FILE).unlink()
            why = f"the graph exported at {a[0]}x{a[1]} fails at {b[0]}x{b[1]}"
    elif a != b:
        why = "its outputs' structure depends on the input size"
    for size in ([] if files else [tuple(s) for s in (sizes or [a])]):
        file = f"image-{size[0]}x{size[1]}.onnx"
        session = write_onnx(model, name, out / file, size, False, ort)
        diff = check(session, model, size)
        if diff > TOLERANCE:
            (out / file).unlink()
            raise UserError(f"{name}: the ONNX image side differs from PyTorch by {diff:.2g} (max abs) "
                            f"at input {size[0]}x{size[1]}; not exported")
        with plain_paths():
            files.append({"size": list(size), "onnx": file, "outputs": describe(model, size)[0],
                          "checked_sizes": [list(size)], "max_abs_diff": diff})
    save_checkpoint(model, out)
    meta = {"format": "vocabseg-export", "version": 1, "runtime": "onnxruntime", "preset": name,
            "dynamic_size": files[0]["size"] is None, "fixed_size_reason": None if files[0]["size"] is None else why,
            "max_abs_diff": max(f["max_abs_diff"] for f in files), "files": files}
    atomic_write(out / META_FILE, json.dumps(meta, indent=1))
    return meta
