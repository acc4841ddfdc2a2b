"""`vocabseg` command line: one module per subcommand in ``vocabseg.commands``.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
A user mistake raises a ``UserError`` (``vocabseg.errors``) or FileNotFoundError:
it is printed as one line and the exit code is 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .commands import bench, demo, eval, export, inspect_dataset, models, prepare, segment, train
from .errors import UserError

COMMANDS = [segment, models, eval, inspect_dataset, prepare, train, demo, bench, export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocabseg", description="Open-vocabulary semantic segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    shown = warnings.formatwarning      # a warning is one line: "vocabseg <cmd>: warning: ..."
    warnings.formatwarning = lambda message, *a, **k: f"vocabseg {args.command}: warning: {message}\n"
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError) as e:
        print(f"vocabseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
