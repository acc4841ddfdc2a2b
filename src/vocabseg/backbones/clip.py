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
import warnings
from pathlib import Path

import open_clip
import torch

from ..convert import mismatch
from ..errors import CheckpointError, WeightsNotFound
from ..files import vocabseg_home
from ..torchfile import is_torchscript, load_torch_file

_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False

# OpenAI CLIP mean / std, used by every CLIP here.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@contextlib.contextmanager
def quiet_random_init():
    """Silence open_clip's "No pretrained weights loaded" warning: random init is
    what vocabseg asks for when it loads the weights itself afterwards. open_clip logs
    through the root logger, whose first use would install a stderr handler for good
    (``logging.basicConfig``): a NullHandler stands in meanwhile."""
    logger = logging.getLogger()
    level, stand_in = logger.level, logging.NullHandler()
    logger.setLevel(max(level, logging.ERROR))
    logger.addHandler(stand_in)
    try:
        yield
    finally:
        logger.removeHandler(stand_in)
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
    forced, quick_gelu, state = quick_gelu, False, None
    if weights and not os.path.isfile(weights):
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        if not cfg and (os.path.lexists(weights) or os.sep in weights or Path(weights).suffix):
            raise WeightsNotFound(f"CLIP weights file not found: {weights}" if not os.path.isdir(weights)
                                  else f"CLIP weights {weights} is a folder, not a weight file")
        if not cfg:
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise CheckpointError(f"unknown CLIP weights {weights!r} for {arch} (neither a file nor a tag open_clip "
                                  f"knows: {', '.join(tags) or 'none'})")
        quick_gelu = bool(cfg.get("quick_gelu", False))
        if not clip_cached(arch, weights):
            from ..hub import hub_endpoint, unreachable
            why = unreachable(hub_endpoint() if cfg.get("hf_hub") else cfg.get("url", ""))
            if why:
                raise WeightsNotFound(
                    f"CLIP weights {arch}/{weights} are not downloaded yet: {why}. Download them where you have "
                    f"network (they are cached under {clip_cache_dir()}), or pass a local file with --clip-weights PATH")
    elif weights:
        state, openai = read_clip_file(weights)
        quick_gelu = openai
    if forced is not None:
        quick_gelu = bool(forced)
    try:
        with quiet_random_init():
            model = open_clip.create_model(arch, pretrained=weights if state is None else None, device=device,
                                           force_quick_gelu=quick_gelu, cache_dir=str(clip_cache_dir()))
    except (RuntimeError, OSError) as e:  # huggingface_hub / urllib failures are OSError or RuntimeError
        if weights and not os.path.isfile(weights):
            raise WeightsNotFound(
                f"could not get CLIP weights {arch}/{weights} ({type(e).__name__}). "
                f"Download them where you have network (they are cached under {clip_cache_dir()}), "
                f"or pass a local file with --clip-weights PATH") from None
        raise
    if state is not None:
        load_clip_state(model, state, arch, weights)
        if forced is None and not quick_gelu and not arch_quick_gelu(arch):
            warn_activation(arch, weights)
    model.eval()
    with quiet_random_init():       # open_clip logs through the root logger here too
        tokenizer = open_clip.get_tokenizer(arch)
    if weights is None:
        identity = f"{arch}:random:{tensor_fingerprint(model)}" if fingerprint else f"{arch}:random"
    elif os.path.isfile(weights):
        identity = f"{arch}:file:{file_fingerprint(weights)}"
    else:
        identity = f"{arch}:{weights}"
    return model, tokenizer, identity


# Entries of OpenAI's TorchScript CLIP that are not weights (its state dict has them; OpenAI's build_model drops them)
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def arch_quick_gelu(arch: str) -> bool:
    """True when open_clip's config of ``arch`` itself uses QuickGELU (``*-quickgelu``)."""
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def read_clip_file(path: str | os.PathLike) -> tuple[dict, bool]:
    """(state dict, known to be OpenAI CLIP) of a local CLIP weight file, read without
    running code. OpenAI released CLIP as TorchScript archives (``ViT-B-16.pt``): those,
    and state dicts saved from them (with OpenAI's ``input_resolution`` /
    ``context_length`` / ``vocab_size`` entries), are OpenAI CLIP, which uses QuickGELU.
    A plain state dict (open_clip's, safetensors) does not say which activation it was
    trained with: False. The file's name never decides."""
    path = str(path)
    if is_torchscript(path):
        try:   # TorchScript, not a Python pickle: open_clip's load_openai_model reads these the same way
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")        # torch's deprecation note on torch.jit
                sd = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:
            raise CheckpointError(f"cannot load {path}: a damaged TorchScript archive") from None
        return dict(sd), True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":       # safetensors: 8-byte header length, then JSON
        from safetensors.torch import load_file
        try:
            sd = load_file(path, device="cpu")
        except Exception:
            raise CheckpointError(f"cannot load {path}: a truncated or damaged safetensors file") from None
    else:
        sd = load_torch_file(path)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"cannot load {path}: it holds no CLIP state dict (name -> tensor)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, any(k in sd for k in OPENAI_EXTRA_KEYS)


def load_clip_state(model, sd: dict, arch: str, path) -> None:
    """Load a CLIP state dict into open_clip ``model`` strictly, after open_clip's own
    adjustments (OpenAI's extra entries and non-persistent buffers dropped, custom-text layout, position
    embeddings resized); a file of another architecture is one line naming it."""
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())    # attn_mask: TorchScript keeps it
    sd = {k: v for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS and k not in transient}
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    scale = getattr(model, "logit_scale", None)
    if torch.is_tensor(scale) and "logit_scale" in sd and sd["logit_scale"].ndim != scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(scale.shape)
    resize_pos_embed(sd, model)
    problem = mismatch(model.state_dict(), sd)
    if problem:
        raise CheckpointError(f"{path} does not hold {arch} CLIP weights" + problem)
    model.load_state_dict(sd)


def _clip_activations(model) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(mlp, activation) of every open_clip transformer block in ``model``."""
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock
    return [(m.mlp, m.mlp.gelu) for m in model.modules()
            if isinstance(m, (ResidualAttentionBlock, CustomResidualAttentionBlock)) and hasattr(m.mlp, "gelu")]


def clip_activation(model) -> str | None:
    """``"quick_gelu"`` or ``"gelu"``: the activation of the open_clip blocks in ``model``
    (None without any). A checkpoint records it: it is not a weight."""
    acts = {type(act).__name__ for _, act in _clip_activations(model)}
    if not acts:
        return None
    return "quick_gelu" if acts == {"QuickGELU"} else "gelu" if acts == {"GELU"} else "mixed"


def set_clip_activation(model, name: str) -> None:
    """Give every open_clip block of ``model`` activation ``name`` (``quick_gelu`` / ``gelu``)."""
    from open_clip.transformer import QuickGELU
    if name not in ("quick_gelu", "gelu"):
        raise ValueError(f"unknown CLIP activation {name!r}")
    for mlp, _ in _clip_activations(model):
        mlp.gelu = QuickGELU() if name == "quick_gelu" else torch.nn.GELU()


_warned: set = set()


def warn_activation(arch: str, path) -> None:
    """Say once per file that its activation is assumed, and how to choose it."""
    key = (arch, str(Path(path).resolve()))
    if key not in _warned:
        _warned.add(key)
        alt = f"clip_arch='{arch}-quickgelu' or " if f"{arch}-quickgelu" in open_clip.list_models() else ""
        warnings.warn(f"CLIP weights {path} do not say whether they are OpenAI's (QuickGELU) or open_clip-trained "
                      f"(GELU): assuming {arch}'s GELU; for OpenAI weights pass OpenAI's own .pt file, "
                      f"{alt}quick_gelu=True", stacklevel=3)


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
