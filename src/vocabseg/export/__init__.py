"""ONNX export of a model's image side, and the runtime that runs an export folder."""
from .onnx import export
from .runtime import is_export, load_export

__all__ = ["export", "is_export", "load_export"]
