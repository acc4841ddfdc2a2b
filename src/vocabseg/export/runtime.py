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
    if not isinstance(meta, dict) or meta.get("format") != "vocabseg-export" or not meta.get("files"):
        raise CheckpointError(f"export {folder}: {META_FILE} is not a vocabseg export description")
    return meta


class OnnxImage:
    """Stands in for ``model.encode_image``: images [B, 3, H, W] -> the same structure, via ONNX Runtime."""

    def __init__(self, folder: Path, meta: dict):
        self.ort, self.folder, self.meta = need_onnx(), folder, meta
        self.files = {None if f["size"] is None else tuple(f["size"]): f for f in meta["files"]}
        for f in meta["files"]:
            if not (folder / f["onnx"]).is_file():
                raise CheckpointError(f"export {folder} has no {f['onnx']}")
        self.sessions = {}

    def session(self, size):
        key = None if None in self.files else size
        if key not in self.files:
            known = ", ".join(f"{h}x{w}" for h, w in self.files)
            raise UserError(f"export {self.folder} has no ONNX file for a {size[0]}x{size[1]} window (it has {known}; "
                            f"{self.meta['preset']}: {self.meta['fixed_size_reason']}): "
                            f"export again with --size {size[0]}x{size[1]}")
        if key not in self.sessions:
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            self.sessions[key] = self.ort.InferenceSession(str(self.folder / self.files[key]["onnx"]), options,
                                                           providers=["CPUExecutionProvider"])
        return self.sessions[key], self.files[key]["outputs"]

    def __call__(self, images: torch.Tensor):
        size = tuple(images.shape[-2:])
        session, spec = self.session(size)
        outs = [run_onnx(session, images[i:i + 1].float()) for i in range(images.shape[0])]
        tensors = [torch.cat(parts).to(images.device) for parts in zip(*outs)]
        return unflatten(spec, tensors, size)


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
