"""Building open_clip models: architecture by name, weights by tag or file.

``create_clip(arch, weights)`` returns the open_clip model, its tokenizer and an
identity string naming architecture + weights exactly (it keys the text cache).
``weights`` is an open_clip pretrained tag (``openai``, ``laion2b_...``), a
local file, or None for random init. Tiny architectures (``tiny-vit``,
``tiny-convnext``) are registered from ``configs/`` for tests.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import open_clip
import torch

from ..errors import WeightsNotFound
from ..files import vocabseg_home

_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False

# OpenAI CLIP mean / std, used by every CLIP here.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@contextlib.contextmanager
def quiet_random_init():
    """Silence open_clip's "No pretrained weights loaded" warning: random init is
    what vocabseg asks for when it loads a whole checkpoint afterwards."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def register_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def file_fingerprint(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def tensor_fingerprint(module: torch.nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """Short sha256 of a module's tensors (names and values); keys starting with
    any prefix in ``exclude`` are left out."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if exclude and name.startswith(exclude):
            continue
        h.update(name.encode())
        h.update(memoryview(t.detach().float().cpu().contiguous().numpy()).cast("B"))   # no copy of the bytes
    return h.hexdigest()[:16]


def text_dim(clip: torch.nn.Module) -> int:
    """Width of the joint embedding space (``text_projection`` is a Parameter or a Linear)."""
    proj = clip.text_projection
    return int(proj.shape[-1]) if torch.is_tensor(proj) else int(proj.out_features)


def create_clip(arch: str, weights: str | None = None, device: str | torch.device | None = None,
                quick_gelu: bool | None = None, fingerprint: bool = True):
    """(model, tokenizer, identity). Raises WeightsNotFound with instructions
    when pretrained weights cannot be found or fetched. ``quick_gelu`` forces the
    activation (e.g. a random-init model that will receive OpenAI-CLIP-derived
    weights); None picks it from the weights. ``device``: default torch's default
    device ("meta" when counting parameters). A random-init model is named by a
    fingerprint of its weights, or just ``{arch}:random`` without ``fingerprint``
    (a model that names its weights itself, or that a checkpoint will overwrite)."""
    device = torch.get_default_device() if device is None else device
    register_configs()
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown CLIP architecture {arch!r}")
    forced, quick_gelu = quick_gelu, False
    if weights and not os.path.isfile(weights):
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        if not cfg:
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise ValueError(f"unknown weights {weights!r} for {arch}; open_clip knows: {', '.join(tags) or 'none'}")
        quick_gelu = bool(cfg.get("quick_gelu", False))
    elif weights:
        quick_gelu = weights_need_quick_gelu(arch, weights)
    if forced is not None:
        quick_gelu = bool(forced)
    try:
        with quiet_random_init():
            model = open_clip.create_model(arch, pretrained=weights, device=device, force_quick_gelu=quick_gelu,
                                           cache_dir=str(clip_cache_dir()))
    except (RuntimeError, OSError) as e:  # huggingface_hub / urllib failures are OSError or RuntimeError
        if weights and not os.path.isfile(weights):
            raise WeightsNotFound(
                f"could not get CLIP weights {arch}/{weights} ({type(e).__name__}: {str(e)[:200]}). "
                f"Download them where you have network (they are cached under {clip_cache_dir()}), "
                f"or pass a local file with --clip-weights PATH") from None
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    if weights is None:
        identity = f"{arch}:random:{tensor_fingerprint(model)}" if fingerprint else f"{arch}:random"
    elif os.path.isfile(weights):
        identity = f"{arch}:file:{file_fingerprint(weights)}"
    else:
        identity = f"{arch}:{weights}"
    return model, tokenizer, identity


def weights_need_quick_gelu(arch: str, path: str) -> bool:
    """OpenAI CLIP weights use QuickGELU; a local file named like them does too."""
    return "openai" in Path(path).name.lower()


def clip_cache_dir() -> Path:
    return vocabseg_home() / "clip"


def clip_cached(arch: str, tag: str | None) -> bool:
    """True when open_clip weights ``arch``/``tag`` are already on disk (no network)."""
    if tag is None or os.path.isfile(tag):
        return True
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [fname] if fname else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if fname.endswith(".bin"):
            names.insert(0, fname[:-4] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo, n, cache_dir=str(clip_cache_dir())), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (clip_cache_dir() / os.path.basename(url)).is_file()
