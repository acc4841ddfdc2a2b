"""Run an export folder: ``encode_image`` through ONNX Runtime (CPU), everything
vocabulary-dependent through the PyTorch head built from the folder's checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, UserError
from .onnx import META_FILE, need_onnx, run_onnx
from .tree import unflatten

RUNTIMES = ("onnxruntime", "torch")


def is_export(path) -> bool:
    try:
        return Path(path).is_dir() and (Path(path) / META_FILE).is_file()
    except (OSError, TypeError):
        return False


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"export {folder}: {META_FILE} cannot be read ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != "vocabseg-export" or "outputs" not in meta:
        raise CheckpointError(f"export {folder}: {META_FILE} is not a vocabseg export description")
    return meta


class OnnxImage:
    """Stands in for ``model.encode_image``: images [B, 3, H, W] -> the same structure, via ONNX Runtime."""

    def __init__(self, folder: Path, meta: dict):
        ort = need_onnx()
        self.meta, self.file = meta, folder / meta["onnx"]
        if not self.file.is_file():
            raise CheckpointError(f"export {folder} has no {meta['onnx']}")
        options = ort.SessionOptions()
        threads = torch.get_num_threads()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.file), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor):
        size = tuple(images.shape[-2:])
        fixed = self.meta.get("input_size")
        if fixed and list(size) != list(fixed):
            raise UserError(f"{self.file} takes {fixed[0]}x{fixed[1]} windows only (exported at one size: "
                            f"{self.meta['preset']} does not allow dynamic sizes); this window is {size[0]}x{size[1]}")
        outs = [run_onnx(self.session, images[i:i + 1].float()) for i in range(images.shape[0])]
        tensors = [torch.cat(parts).to(images.device) for parts in zip(*outs)]
        return unflatten(self.meta["outputs"], tensors, size)


def load_export(path: str | os.PathLike, runtime: str | None = None, device="cpu"):
    """The model of export folder ``path``; ``runtime`` ``onnxruntime`` (default) or ``torch`` (the checkpoint alone)."""
    from ..registry import load_checkpoint
    folder = Path(path)
    meta = read_meta(folder)
    runtime = runtime or meta.get("runtime", "onnxruntime")
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and torch.device(device).type != "cpu":
        raise UserError("runtime onnxruntime runs on the CPU; use device cpu or runtime torch")
    image = OnnxImage(folder, meta) if runtime == "onnxruntime" else None
    model = load_checkpoint(folder, device)
    if image is not None:
        model.encode_image = image
    return model
