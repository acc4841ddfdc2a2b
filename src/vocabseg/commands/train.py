"""`vocabseg train CONFIG [key=value ...]`: run a model's training recipe (configs/*.yaml)
on one process or under torchrun, with periodic checkpoints, evaluation and an exact
--resume."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  vocabseg train configs/san-vit-b16.yaml                          # -> runs/san-vit-b16/
  vocabseg train configs/san-vit-b16.yaml optim.lr=2e-4 train.batch_size=16 --output runs/try
  torchrun --nproc_per_node 8 -m vocabseg.cli train configs/fcclip-convnext-l.yaml
  vocabseg train configs/san-vit-b16.yaml --resume                 # continue runs/san-vit-b16/
  vocabseg train configs/finetune-san.yaml data.train=folder:data/mine model.weights=san_vit_b_16.pth
The run folder holds config.yaml, metrics.jsonl (one JSON line per log_every iterations and
per evaluation), checkpoints/iter_*.pt (full state; SIGTERM or Ctrl-C saves one and stops),
eval/*.json and, at the end, model/ (a vocabseg checkpoint: vocabseg eval --model DIR/model).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a model from a config (SAN, FC-CLIP, SegCLIP recipes)",
                              description=__doc__, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (see configs/ and the README's training section)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="run folder (default: train.output_dir, else runs/<config name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run folder's last checkpoint, or the given checkpoint file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    import signal
    from ..errors import UserError
    from ..engine import distributed as D
    from ..engine.training.config import load_config
    from ..engine.training.train import train
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"expected key=value overrides after the config, got {bad[0]!r}")
    cfg = load_config(args.config, args.overrides)
    output = args.output or cfg["train"]["output_dir"] or str(Path("runs") / Path(args.config).stem)
    try:
        result = train(cfg, output, resume=args.resume, device=args.device, progress=not args.no_progress)
        main = D.is_main()
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        D.cleanup()
    if result["stopped"]:
        if main:
            print(f"vocabseg train: stopped at iteration {result['iteration']} of {result['total']}; "
                  f"checkpoint {result['checkpoint']}; continue with --resume", flush=True)
        return 130 if result["signal"] == signal.SIGINT else 143
    if main:
        print(f"vocabseg train: {result['iteration']} iterations done; run folder {result['output_dir']}", flush=True)
    return 0
