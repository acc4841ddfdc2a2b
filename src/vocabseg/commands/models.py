"""`vocabseg models`: the model zoo, what each needs and what is already on disk."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="list the model zoo and which weights are cached",
                              description=__doc__)
    p.add_argument("--all", action="store_true", help="also list the tiny test presets")
    return p


def status(spec) -> str:
    """Where the model's weights come from and whether they are on disk."""
    from ..backbones.clip import clip_cached
    from ..hub import cached_weights
    if spec.test_only:
        return "random init (tests)"
    parts = []
    if spec.weights is not None:
        parts.append(f"{spec.weights.filename}: " + ("cached" if cached_weights(spec.weights).is_file()
                                                     else "downloaded on first use"))
    if spec.clip and spec.clip[1] and spec.needs_clip:
        cached = clip_cached(*spec.clip)
        parts.append(f"CLIP {spec.clip[0]}/{spec.clip[1]}: " + ("cached" if cached else "downloaded on first use"))
    return "; ".join(parts)


def run(args) -> int:
    from ..api import DEFAULT_MODEL
    from ..registry import all_specs
    specs = all_specs(include_test=args.all)
    width = max(len(n) for n in specs) + 2
    print(f"{'model':<{width}}{'family':<10}weights")
    for name, spec in specs.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<{width}}{spec.family:<10}{status(spec)}{mark}")
        if spec.description:
            print(f"{'':<{width}}{'':<10}{spec.description}")
        if spec.published:
            nums = ", ".join(f"{k} {v}" for k, v in spec.published.items())
            print(f"{'':<{width}}{'':<10}published mIoU: {nums}")
    return 0
