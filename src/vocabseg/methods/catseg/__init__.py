from .presets import PRESETS

__all__ = ["PRESETS"]
