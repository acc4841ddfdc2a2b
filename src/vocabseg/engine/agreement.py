"""Which lower precision is offered for which preset (issue 15): the argmax agreement with
fp32 measured with random weights at the published sizes (``MEASURED``), and on the tiny
models ``benchmarks/learn_synthetic.py`` trains (``TRAINED``: agreement and held-out mIoU
drop). ``refusal(precision, preset)`` says why one is not offered, or None;
``engine.precision`` turns that into the one-line error and the ``auto`` choice.
"""
from __future__ import annotations

MIN_AGREEMENT = 0.99      # share of pixels whose argmax must equal fp32's for a precision to be offered
# Measured by ``python benchmarks/precision.py --threads 1 --runs 1 --no-text --models NAME,...`` (random
# weights at the published sizes, one 512x683 random-texture image, the preset's benchmark
# vocabulary): the share of pixels whose argmax equals fp32's. A precision under MIN_AGREEMENT is
# refused for that preset; the tiny presets are gated by TRAINED below; presets in neither
# (exported folders) are not gated. Random weights leave SegCLIP's, CAT-Seg's and some ProxyCLIP
# presets' class scores near-tied (score ranges 0.01-0.8 against bf16 differences of 0.002-0.07),
# which is where they fall under 99 %.
# 2026-12-03, AMD EPYC (avx512_bf16, avx512_vnni), torch 2.14.1, 1 thread, with the bf16 twin's
# fused activations and ProxyCLIP's fp32 proxy attention.
MEASURED = {
    "san-vit-b16": {"bf16": 1.0, "int8": 1.0},
    "san-vit-l14": {"bf16": 1.0, "int8": 1.0},
    "fcclip-convnext-l": {"bf16": 1.0, "int8": 1.0},
    "segclip-vit-b16": {"bf16": 0.9468, "int8": 0.9237},
    "maskclip-vit-b16": {"bf16": 0.9912, "int8": 0.9854},
    "sclip-vit-b16": {"bf16": 0.9916, "int8": 0.9909},
    "clearclip-vit-b16": {"bf16": 0.9948, "int8": 0.9892},
    "naclip-vit-b16": {"bf16": 0.9986, "int8": 0.9981},
    "sclip-vit-b16+resclip": {"bf16": 0.9964, "int8": 0.9938},
    "clearclip-vit-b16+resclip": {"bf16": 0.9977, "int8": 0.9958},
    "naclip-vit-b16+resclip": {"bf16": 0.9997, "int8": 0.9997},
    "catseg-vit-b16": {"bf16": 0.9533, "int8": 0.9455},
    "catseg-vit-l14": {"bf16": 0.9088, "int8": 0.8929},
    "proxyclip-vit-b16": {"bf16": 0.9765, "int8": 0.9688},
    "proxyclip-vit-b16-dinov2": {"bf16": 0.9984, "int8": 0.9988},
    "proxyclip-vit-b16-dinob16": {"bf16": 0.9932, "int8": 0.9882},
    "proxyclip-vit-b16-dinov2l14": {"bf16": 0.9622, "int8": 0.9696},
    "proxyclip-vit-l14": {"bf16": 0.9825, "int8": 0.9788},
    "proxyclip-vit-l14-dinov2": {"bf16": 0.9396, "int8": 0.9640},
    "proxyclip-vit-h14": {"bf16": 0.9941, "int8": 0.9931},
    "proxyclip-vit-h14-dinov2": {"bf16": 0.9999, "int8": 0.9998},
}


MAX_MIOU_DROP = 0.5      # held-out mIoU points a precision may lose against fp32 on a trained model
# The tiny presets' trained models, as (share of held-out pixels whose argmax equals fp32's,
# held-out mIoU drop from fp32 in points; negative: a gain). A precision under MIN_AGREEMENT or
# losing more than MAX_MIOU_DROP is refused for that preset. Measured by
# ``python benchmarks/learn_synthetic.py --precisions bf16 int8 --minutes 2 --threads 1`` (each model
# trained ~2-5 min on synthetic scenes; held-out mIoU at fp32 39.8-81.6, chance 6.9-14.4; san-tiny:
# the worse of its benchmark- and folder-source models), 2026-12-03, AMD EPYC (avx512_bf16,
# avx512_vnni), torch 2.14.1, 1 thread, shared machine.
TRAINED: dict[str, dict[str, tuple[float, float]]] = {
    "catseg-tiny": {"bf16": (0.9966, -0.14), "int8": (0.9978, -0.01)},
    "fcclip-tiny": {"bf16": (0.9991, -0.06), "int8": (0.9992, 0.19)},
    "san-tiny": {"bf16": (0.9991, 0.03), "int8": (0.9995, 0.00)},
    "segclip-tiny": {"bf16": (0.9973, 0.05), "int8": (0.9999, 0.00)},
}


def refusal(precision: str, preset: str | None) -> str | None:
    """Why ``precision`` is not offered for ``preset`` (``MEASURED``, ``TRAINED``), or None."""
    agree = MEASURED.get(preset or "", {}).get(precision)
    if agree is not None and agree < MIN_AGREEMENT:
        return (f"its argmax agreed with fp32 on only {100 * agree:.1f} % of pixels (measured with random weights; "
                f"{100 * MIN_AGREEMENT:.0f} % needed)")
    agree, drop = TRAINED.get(preset or "", {}).get(precision, (1.0, 0.0))
    why = ([f"argmax agreed with fp32 on only {100 * agree:.2f} % of held-out pixels "
            f"({100 * MIN_AGREEMENT:.0f} % needed)"] if agree < MIN_AGREEMENT else []) + \
          ([f"held-out mIoU fell {drop:.2f} points below fp32's (at most {MAX_MIOU_DROP} allowed)"]
           if drop > MAX_MIOU_DROP else [])
    return "on the model benchmarks/learn_synthetic.py trains, its " + " and its ".join(why) if why else None
