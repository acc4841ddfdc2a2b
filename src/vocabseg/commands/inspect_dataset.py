"""`vocabseg inspect-dataset SOURCE`: see that a dataset is read right before training on it:
the problems its checks find, image sizes, each class's share of the labelled pixels and, with
--out, a grid of images with their labels drawn over them and the numbers as JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
examples:
  vocabseg inspect-dataset folder:data/mine --out inspect/     # images/, labels/, classes.txt
  vocabseg inspect-dataset coco:annotations/instances_val.json:images/ --split val
  vocabseg inspect-dataset ade150 --limit 200                   # a benchmark too
--out writes grid_<name>.png (the first --grid images, labels over them, a legend) and
inspect_<name>.json (sizes, per-class pixel shares and image counts, problems).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect-dataset", help="check a dataset (your own folder / COCO file, or a benchmark): "
                                                      "problems, sizes, class shares, a picture",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="folder:PATH, coco:FILE.json[:IMAGE_DIR] or a benchmark name")
    p.add_argument("--split", default="val", help="split (default val; a folder without splits/ has one)")
    p.add_argument("--root", default=None, help="datasets root for a benchmark name")
    p.add_argument("--out", default=None, metavar="DIR", help="write grid_<name>.png and inspect_<name>.json here")
    p.add_argument("--grid", type=int, default=8, metavar="N", help="images in the grid (default 8)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="statistics over the first N images only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def statistics(ds, limit: int | None = None, progress: bool = True) -> dict:
    """Sizes and class shares of ``ds`` (items that cannot be read are counted and named)."""
    import numpy as np
    from tqdm.auto import tqdm
    from ..data.benchmarks import DatasetError
    n = len(ds) if limit is None else min(limit, len(ds))
    names = ds.vocabulary_for(None).names
    pixels = np.zeros(ds.num_classes, dtype=np.int64)
    images = np.zeros(ds.num_classes, dtype=np.int64)
    ignored, sizes, unreadable = 0, [], []
    for i in tqdm(range(n), desc=f"inspect {ds.name}", unit="img", disable=not progress):
        try:
            item = ds[i]
        except DatasetError as e:
            unreadable.append(str(e))
            continue
        sizes.append(tuple(item["image"].shape[1:]))
        if "sem_seg" in item:
            sem = item["sem_seg"].numpy().ravel()
            keep = sem != ds.ignore_index
            ignored += int((~keep).sum())
            counts = np.bincount(sem[keep], minlength=ds.num_classes)[:ds.num_classes]
            pixels += counts
            images += counts > 0
    total = int(pixels.sum())
    hs, ws = (np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])) if sizes else (np.zeros(1),) * 2
    common: dict = {}
    for s in sizes:
        common[f"{s[0]}x{s[1]}"] = common.get(f"{s[0]}x{s[1]}", 0) + 1
    return {"dataset": getattr(ds, "spec", ds.name), "split": getattr(ds, "split", None), "images": n,
            "classes": ds.num_classes, "ignore_index": int(getattr(ds, "file_ignore", ds.ignore_index)), "background": getattr(ds, "background", None),
            "has_labels": bool(getattr(ds, "has_labels", True)),
            "height": {"min": int(hs.min()), "median": float(np.median(hs)), "max": int(hs.max())},
            "width": {"min": int(ws.min()), "median": float(np.median(ws)), "max": int(ws.max())},
            "common_sizes": dict(sorted(common.items(), key=lambda kv: -kv[1])[:5]),
            "labelled_pixels": total, "ignored_pixels": ignored,
            "per_class": {names[c]: {"share": float(pixels[c] / total * 100) if total else 0.0,
                                     "pixels": int(pixels[c]), "images": int(images[c])}
                          for c in range(ds.num_classes)},
            "problems": getattr(ds, "problems", "") or "", "unreadable": unreadable}


def grid(ds, count: int, tile: int = 192):
    """PIL image: the first ``count`` readable items, labels blended over them with outlines,
    4 to a row, and a legend of the classes shown."""
    import numpy as np
    from PIL import Image
    from ..data.benchmarks import DatasetError
    from ..render import blend, outlines, palette, with_legend
    names = ds.vocabulary_for(None).names
    colours = palette(ds.num_classes)
    tiles, shown = [], set()
    for i in range(len(ds)):
        if len(tiles) >= count:
            break
        try:
            item = ds[i]
        except DatasetError:
            continue
        img = item["image"].permute(1, 2, 0).numpy()
        if "sem_seg" in item:
            sem = item["sem_seg"].numpy()
            valid = sem != ds.ignore_index
            ids = np.where(valid, sem, 0)
            img = blend(img, colours[ids], 0.5, where=valid)
            img[outlines(np.where(valid, sem, -1))] = 0
            shown |= set(np.unique(sem[valid]).tolist())
        pil = Image.fromarray(img)
        scale = tile / max(pil.size)
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))),
                         Image.NEAREST if scale > 1 else Image.BILINEAR)      # small images grown, pixels kept
        tiles.append(pil)
    cols = min(4, max(len(tiles), 1))
    rows = -(-len(tiles) // cols) if tiles else 1
    canvas = Image.new("RGB", (cols * (tile + 4), rows * (tile + 4)), (255, 255, 255))
    for k, t in enumerate(tiles):
        canvas.paste(t, ((k % cols) * (tile + 4), (k // cols) * (tile + 4)))
    entries = [(tuple(int(x) for x in colours[c]), names[c]) for c in sorted(shown)]
    return with_legend(np.asarray(canvas), entries)


def summary(stats: dict, top: int = 15) -> list[str]:
    h, w = stats["height"], stats["width"]
    lines = [f"{stats['dataset']} ({stats['split']}): {stats['images']} images, {stats['classes']} classes, "
             f"ignore value {stats['ignore_index']}" + (f", background class {stats['background']}"
                                                         if stats["background"] is not None else ""),
             f"  sizes (HxW): {h['min']}..{h['max']} x {w['min']}..{w['max']} (median {h['median']:g}x{w['median']:g});"
             f" most common {', '.join(f'{k} ({v})' for k, v in stats['common_sizes'].items())}"]
    if not stats["has_labels"]:
        lines.append("  no labels/ folder: the images can be segmented, not evaluated or trained on")
    else:
        total = stats["labelled_pixels"] + stats["ignored_pixels"]
        lines.append(f"  labelled pixels {stats['labelled_pixels']} ({stats['labelled_pixels'] / max(total, 1) * 100:.1f}%"
                     f" of all; the rest is the ignore value)")
        rows = sorted(stats["per_class"].items(), key=lambda kv: -kv[1]["pixels"])
        absent = [k for k, v in rows if v["pixels"] == 0]
        lines.append(f"  {'class':<24} {'pixels %':>9} {'images':>7}")
        for k, v in rows[:top]:
            if v["pixels"]:
                lines.append(f"  {k[:24]:<24} {v['share']:>9.2f} {v['images']:>7}")
        if len(rows) - len(absent) > top:
            lines.append(f"  ... {len(rows) - len(absent) - top} more classes (all in the JSON)")
        if absent:
            lines.append(f"  {len(absent)} classes never occur: {', '.join(absent[:8])}" + (" ..." if len(absent) > 8 else ""))
    lines.append(f"  problems: {stats['problems'] or 'none found'}")
    for u in stats["unreadable"][:3]:
        lines.append(f"  unreadable: {u}")
    return lines


def run(args) -> int:
    from ..errors import UserError
    from ..files import atomic_write
    if args.grid < 0 or (args.limit is not None and args.limit < 1):
        raise UserError("--grid must be 0 or more and --limit at least 1")
    if args.out:
        from ..outputs import check_out_folder
        check_out_folder(args.out)
    from ..data.sources import is_source, open_source
    if is_source(args.source):
        ds = open_source(args.source, args.split, strict=False)
    else:
        from ..data import get_dataset
        try:
            ds = get_dataset(args.source, args.split, args.root, allow_missing=True)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
    stats = statistics(ds, args.limit, progress=not args.no_progress)
    print("\n".join(summary(stats)), flush=True)
    if args.out:
        out = Path(args.out)
        js = atomic_write(out / f"inspect_{ds.name}.json", json.dumps(stats, indent=1))
        print(f"  wrote {js}")
        if args.grid:
            png = out / f"grid_{ds.name}.png"
            atomic_write(png, lambda f: grid(ds, args.grid).save(f, format="PNG"))
            print(f"  wrote {png}")
    return 0
