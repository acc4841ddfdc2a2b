"""`vocabseg demo`: the web demo (Gradio; install with pip install 'vocabseg[demo]').

Upload or pick an image, choose a model, type a vocabulary or pick a benchmark's,
see the overlay with a clickable legend, the label map and (FC-CLIP) the
panoptic view, and download the PNG / JSON results. The model list holds every
zoo model whose weights are already on disk plus each --model given (a zoo name
or a vocabseg checkpoint folder, offered under its folder name); a request may
name only these. One model is loaded at a time, requests queue one by one, and
uploads and results live in a temporary folder removed at exit. Every argument
is checked before a model loads.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="start the web demo (Gradio)", description=__doc__)
    p.add_argument("--model", action="append", default=None, metavar="NAME|DIR",
                   help="a zoo name or a vocabseg checkpoint folder; repeat for several (the first is the default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024,
                   help="larger images are downscaled to this many pixels, aspect kept (default 1048576)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB (default 10)")
    p.add_argument("--queue-size", type=int, default=32, help="requests waiting at most (default 32)")
    p.add_argument("--examples", default=None, metavar="DIR", help="folder of example images (default: examples/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    from ..engine.inference.refine import REFINE_HELP
    p.add_argument("--refine", default=None, metavar="SPEC", help=f"post-process semantic scores: {REFINE_HELP}")
    return p


def available_models() -> list[str]:
    """Zoo models (no test presets) whose weights are all on disk already."""
    from ..registry import all_specs
    from .models import status
    return [name for name, spec in all_specs().items() if "downloaded on first use" not in status(spec)]


def model_list(given: list[str] | None) -> dict[str, str]:
    """{name shown and accepted by the page: what ``load`` takes}: the given models
    first, then the available zoo models. A checkpoint folder is offered under its
    folder name (its path is never sent to a browser). Unknown names are an error
    here, not on the page."""
    from ..api import DEFAULT_MODEL
    from ..checkpoint import is_checkpoint
    from ..errors import UserError
    from ..registry import all_specs
    zoo = all_specs(include_test=True)
    models: dict[str, str] = {}
    for m in given or []:
        if is_checkpoint(m):
            path = str(Path(m).resolve())
            if path in models.values():
                continue
            base = Path(path).name or "checkpoint"
            name, i = base, 1
            while name in models or name in zoo:     # a folder named like a zoo model is not that model
                i += 1
                name = f"{base} (checkpoint{'' if i == 2 else f' {i - 1}'})"
            models[name] = path
        elif os.path.exists(m):
            raise UserError(f"--model {m}: not a vocabseg checkpoint folder (model.safetensors + config.json)")
        elif m in zoo:
            models[m] = m
        else:
            shown = sorted(n for n, s in zoo.items() if not s.test_only)
            raise UserError(f"--model {m}: unknown model; use a zoo name ({', '.join(shown)}) or a checkpoint folder")
    for m in available_models():
        models.setdefault(m, m)
    if not models:
        models[DEFAULT_MODEL] = DEFAULT_MODEL   # its weights are downloaded when it is loaded below
    return models


def check_address(host: str, port: int) -> None:
    """The server can listen on ``host:port``: checked before any model loads."""
    import errno
    import socket
    from ..errors import UserError
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: use a port number from 1 to 65535")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, ValueError):
        raise UserError(f"--host {host}: not a host name or address this machine can resolve") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: already in use on {host}; choose another port") from None
            if e.errno == errno.EACCES:
                raise UserError(f"--port {port}: permission denied (ports below 1024 need privileges)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host}: not an address of this machine (use 127.0.0.1 or 0.0.0.0)") from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def check_limits(args) -> None:
    import math
    from ..errors import UserError
    if args.max_pixels < 64 * 64:
        raise UserError(f"--max-pixels {args.max_pixels}: use at least 4096")
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise UserError(f"--max-upload-mb {args.max_upload_mb:g}: use a positive number of MB")
    if args.queue_size < 1:
        raise UserError(f"--queue-size {args.queue_size}: use at least 1")


def default_examples(folder: str | None) -> list[str]:
    from ..images import IMAGE_SUFFIXES
    root = Path(folder) if folder else Path(__file__).resolve().parents[3] / "examples"
    if folder and not root.is_dir():
        from ..errors import UserError
        raise UserError(f"--examples {folder}: not a folder")
    if not root.is_dir():
        return []
    return [str(p) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def run(args) -> int:
    """Every argument is checked before a model loads or a folder is made."""
    from .segment import check_device
    from ..errors import UserError
    check_limits(args)
    check_address(args.host, args.port)
    check_device(args.device)
    from ..engine.inference.refine import parse_refine
    parse_refine(args.refine)
    models = model_list(args.model)
    examples = default_examples(args.examples)
    temp_dir = Path(tempfile.mkdtemp(prefix="vocabseg-demo-"))
    atexit.register(shutil.rmtree, temp_dir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir / "gradio")    # before gradio is imported
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        from ..demo import app
    except ModuleNotFoundError as e:
        if e.name == "gradio":
            raise UserError("the demo needs Gradio: pip install 'vocabseg[demo]'") from None
        raise
    from ..api import load
    from ..demo.callbacks import Limits
    limits = Limits(max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb)
    factory = functools.partial(load, device=args.device, refine=args.refine)
    first = next(iter(models))
    print(f"vocabseg demo: loading {first} ...", file=sys.stderr)
    demo = app.build_app(factory, models, limits=limits, temp_dir=temp_dir, examples=examples,
                         queue_size=args.queue_size, preload=True)
    print(f"vocabseg demo: models {', '.join(models)}; temporary files in {temp_dir}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)   # `kill` stops it like Ctrl-C: the server closes, temp files go
    app.launch(demo, host=args.host, port=args.port, share=args.share, limits=limits)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
