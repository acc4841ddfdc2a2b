"""`vocabseg` command line: one module per subcommand in ``vocabseg.commands``.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
A user mistake raises ``UserError`` (or VocabularyError / WeightsNotFound /
FileNotFoundError): it is printed as one line and the exit code is 2.
"""
from __future__ import annotations

import argparse
import sys

from .commands import bench, demo, eval, models, prepare, segment, train
from .errors import UserError  # noqa: F401  (commands raise it as vocabseg.cli.UserError)

COMMANDS = [segment, models, eval, prepare, train, demo, bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocabseg", description="Open-vocabulary semantic segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    from .backbones.clip import WeightsNotFound
    from .vocab import VocabularyError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UserError, VocabularyError, WeightsNotFound, FileNotFoundError) as e:
        print(f"vocabseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
