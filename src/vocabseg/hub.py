"""Downloads of published weights: ``fetch_weights(spec)`` gets a zoo model's
file (``spec.weights``, a ``vocabseg.spec.WeightSource``) through huggingface_hub
or a URL (checked against sha256) into ``$VOCABSEG_HOME/weights``. Nothing here
touches the network at import time.
"""
from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import WeightsNotFound
from .files import atomic_write, vocabseg_home


def weights_dir() -> Path:
    return vocabseg_home() / "weights"


def cached_weights(src) -> Path:
    return weights_dir() / src.filename


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: nothing is downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """None when a download from ``url`` can start, else why not in a few words: offline
    mode, or one TCP connection to its host failed (no retries). Behind a proxy
    (``*_PROXY``) the connection is left to the downloader."""
    if offline():
        return "offline mode (HF_HUB_OFFLINE)"
    if urllib.request.getproxies():
        return None
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{parts.hostname}:{port} cannot be reached ({e.strerror or type(e).__name__})"
    return None


def fetch_weights(spec) -> Path:
    """Local path of ``spec``'s published checkpoint, downloading it on first use."""
    src = spec.weights
    if src is None:
        raise ValueError(f"model {spec.name} has no published checkpoint")
    target = cached_weights(src)
    if target.is_file():
        return target
    how = (f"Download {src.filename} from "
           + (f"https://huggingface.co/{src.repo_id}" if src.repo_id else src.url)
           + f" and pass it with --weights PATH (Python: weights=PATH), or place it at {target}")
    why = unreachable(hub_endpoint() if src.repo_id else src.url)
    if why and not (src.repo_id and _hf_cached(src)):
        raise WeightsNotFound(f"model {spec.name} needs {src.filename}, which is not downloaded yet: {why}. {how}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:        # a read-only $VOCABSEG_HOME
        raise WeightsNotFound(f"model {spec.name} needs {src.filename}, which cannot be saved under {target.parent} "
                              f"({e.strerror or type(e).__name__}). {how}") from None
    try:
        if src.repo_id:
            from huggingface_hub import hf_hub_download
            path = Path(hf_hub_download(src.repo_id, src.filename, cache_dir=str(weights_dir() / "hf"),
                                        local_files_only=bool(why)))
            os.link(path, target) if not target.exists() else None
        else:
            atomic_write(target, lambda f: _download(src.url, f, src.filename))
    except Exception as e:  # no network, 404, ...: one clear message
        raise WeightsNotFound(f"model {spec.name} needs {src.filename}, which could not be downloaded "
                              f"({type(e).__name__}). {how}") from None
    if src.sha256 and sha256_file(target) != src.sha256:
        bad = target.with_suffix(target.suffix + ".bad")
        os.replace(target, bad)
        raise WeightsNotFound(f"{src.filename} does not match its sha256 (moved to {bad}). {how}")
    return target


def _hf_cached(src) -> bool:
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(src.repo_id, src.filename, cache_dir=str(weights_dir() / "hf")), str)


def _download(url: str, f, name: str) -> None:
    from tqdm.auto import tqdm
    with urllib.request.urlopen(url, timeout=60) as r:
        total = int(r.headers.get("Content-Length") or 0)
        with tqdm(total=total or None, unit="B", unit_scale=True, desc=name) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
