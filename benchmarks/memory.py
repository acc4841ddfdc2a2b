"""Peak memory of `vocabseg segment` (issue 19, item 3).

    python benchmarks/memory.py [--models san-tiny maskclip-tiny san-vit-b16] [--megapixels 4]
                                [--vocab ade150] [--before /path/to/old/src] [--task semantic]
    python benchmarks/memory.py --models catseg-vit-b16 --vocab ade847:catseg   # CAT-Seg, 847 classes

Each configuration runs `vocabseg segment` on a synthetic image in a fresh Python
process and reports that process's peak resident memory (VmHWM). Models are built
with random weights (no download) and saved as vocabseg checkpoints in a temporary
folder. ``--before SRC`` also runs every configuration with the sources in SRC
(e.g. a checkout of the commit before the banded scores) for a before / after table.
Memory only: the machine may be shared, so no timings are reported.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
from vocabseg.cli import main
rc = main(sys.argv[1:])
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print('PEAK_KB', hwm, rc)
"""


def make_image(path: Path, megapixels: float) -> None:
    import numpy as np
    from PIL import Image
    side = int((megapixels * 1e6) ** 0.5)
    g = np.random.default_rng(0)
    small = (g.random((side // 64 + 1, side // 64 + 1, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((side, side), Image.NEAREST).save(path)


def make_checkpoint(name: str, folder: Path) -> Path:
    from vocabseg.checkpoint import save_checkpoint
    from vocabseg.registry import get_spec
    out = folder / name
    if not out.exists():
        save_checkpoint(get_spec(name).build(), out)
    return out


def peak_kb(src: str | None, argv: list[str], env: dict) -> tuple[int, int]:
    env = dict(env)
    if src:
        env["PYTHONPATH"] = src
    r = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("PEAK_KB")]
    if not line:
        raise RuntimeError(f"vocabseg {' '.join(argv)} failed:\n{r.stderr[-2000:]}")
    _, kb, rc = line[0].split()
    return int(kb), int(rc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["san-tiny", "maskclip-tiny", "san-vit-b16"])
    ap.add_argument("--megapixels", type=float, nargs="+", default=[4.0])
    ap.add_argument("--vocab", default="ade150")
    ap.add_argument("--task", default="semantic")
    ap.add_argument("--before", default=None, metavar="SRC", help="sources of the version to compare with")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `vocabseg segment` options")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vocabseg-memory-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VOCABSEG_HOME": str(tmp / "home")}
    here = str(Path(__file__).resolve().parents[1] / "src")
    versions = [("before", args.before), ("after", here)] if args.before else [("now", here)]
    print(f"| model | image | vocabulary | task | " + " | ".join(f"peak RSS {v} (GB)" for v, _ in versions) + " |")
    print("|---|---|---|---|" + "---|" * len(versions))
    for mp in args.megapixels:
        image = tmp / f"image_{mp:g}mp.png"
        make_image(image, mp)
        for name in args.models:
            ck = make_checkpoint(name, tmp / "ck")
            argv = ["segment", str(image), "--model", str(ck), "--dataset-vocab", args.vocab, "--task", args.task,
                    *args.extra]
            cells = []
            for label, src in versions:
                no_limit = [] if label == "before" else ["--max-pixels", "none"]     # the old code has no flag
                out = ["--out", str(tmp / f"out-{label}-{name}")]      # the old code's files are not in the manifest
                kb, rc = peak_kb(src, argv + out + no_limit, env)
                cells.append(f"{kb / 1e6:.2f}" + ("" if rc == 0 else f" (exit {rc})"))
            print(f"| {name} | {mp:g} MP | {args.vocab} | {args.task} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
