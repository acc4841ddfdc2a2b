"""`vocabseg prepare KIND SRC [--root DIR]`: convert an official download into the
detectron2 layout under the datasets root (resumable; the source is only read)."""
from __future__ import annotations

import argparse

KINDS = ["voc", "pcontext", "pcontext-full", "ade20k", "ade20k-full", "coco-stuff", "coco-object",
         "cityscapes", "coco-panoptic"]
HELP = """\
what SRC is for each KIND (benchmarks it produces):
  voc            VOCdevkit/VOC2012 of VOCtrainval_11-May-2012.tar            (voc20, voc21)
  pcontext       VOCdevkit/VOC2010 with trainval_merged.json                 (pc59, pc60)
  pcontext-full  VOCdevkit/VOC2010 with trainval/*.mat (trainval.tar.gz)      (pc459)
  ade20k         ADEChallengeData2016 (ADEChallengeData2016.zip)              (ade150)
  ade20k-full    ADE20K_2021_17_01                                            (ade847)
  coco-stuff     coco with {train,val}2017/ and stuffthingmaps/               (coco-stuff)
  coco-object    coco with annotations/instances_{train,val}2017.json         (coco-object)
  cityscapes     cityscapes with leftImg8bit/ and gtFine/                     (cityscapes)
  coco-panoptic  coco with annotations/panoptic_{train,val}2017.{json,zip}    (coco-panoptic)
The datasets root is --root, else $VOCABSEG_DATASETS, else $DETECTRON2_DATASETS, else ./datasets.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prepare", help="convert an official dataset download to the benchmark layout",
                              description=__doc__, epilog=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" | ".join(KINDS))
    p.add_argument("src", metavar="SRC", help="the extracted official download (read only)")
    p.add_argument("--root", default=None, help="datasets root to write into")
    p.add_argument("--from-stuffthingmaps", action="store_true",
                   help="coco-object only: build it from stuffthingmaps/ like the training-free papers' "
                        "cvt_coco_object.py (stuff and unlabeled -> background) instead of the instances JSON")
    return p


def run(args) -> int:
    from ..data.benchmarks import datasets_root
    from ..data.prepare import prepare
    from ..errors import UserError
    options = {}
    if args.from_stuffthingmaps:
        if args.kind != "coco-object":
            raise UserError("--from-stuffthingmaps only applies to coco-object")
        options["from_stuffthingmaps"] = True
    result = prepare(args.kind, args.src, args.root, **options)
    print(f"vocabseg prepare {args.kind}: wrote {result['written']} files, skipped {result['skipped']} "
          f"already present, under {datasets_root(args.root)}")
    return 0
