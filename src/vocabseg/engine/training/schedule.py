"""Learning-rate schedules: a factor of each parameter group's base learning rate
as a function of the 0-based iteration ``i`` (the update about to be made), out
of ``T`` iterations.

- ``constant``: 1.
- ``poly`` (detectron2 / MaskFormer ``WarmupPolyLR``, SAN): (1 - i / T) ^ power.
- ``multistep`` (detectron2 ``WarmupMultiStepLR``, FC-CLIP): gamma ^ (number of
  milestones <= i).
- ``warmup_cosine`` (SegCLIP's AdamW schedule): with x = (i + 1) / T and warmup
  fraction w: x / w while x < w, then (1 + cos(pi (x - w) / (1 - w))) / 2.

``poly``, ``multistep`` and ``constant`` take detectron2's linear warmup: for
i < warmup_iters the factor is multiplied by warmup_factor (1 - a) + a with
a = i / warmup_iters (``warmup_fraction`` gives warmup_iters as a fraction of T).
"""
from __future__ import annotations

import bisect
import math


class Schedule:
    def __init__(self, name: str, total: int, power: float = 0.9, milestones=(), gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_fraction: float = 0.0, warmup_factor: float = 0.001):
        if total < 1:
            raise ValueError(f"a schedule needs at least one iteration, got {total}")
        if name not in ("constant", "poly", "multistep", "warmup_cosine"):
            raise ValueError(f"unknown schedule {name!r}; use constant, poly, multistep or warmup_cosine")
        self.name, self.total, self.power, self.gamma = name, total, float(power), float(gamma)
        self.milestones = sorted(int(m) for m in milestones)
        self.warmup_fraction = float(warmup_fraction) or int(warmup_iters) / total
        self.warmup_iters = int(warmup_iters) or int(round(warmup_fraction * total))
        self.warmup_factor = float(warmup_factor)
        if name == "warmup_cosine" and not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")

    @classmethod
    def from_config(cls, s: dict, total: int) -> "Schedule":
        return cls(s["name"], total, s["power"], s["milestones"], s["gamma"], s["warmup_iters"],
                   s["warmup_fraction"], s["warmup_factor"])

    def _warmup(self, i: int) -> float:
        if i >= self.warmup_iters:
            return 1.0
        a = i / self.warmup_iters
        return self.warmup_factor * (1 - a) + a

    def factor(self, i: int) -> float:
        if self.name == "warmup_cosine":
            x, w = (i + 1) / self.total, self.warmup_fraction
            if x < w:
                return x / w
            return 0.5 * (1.0 + math.cos(math.pi * (x - w) / (1 - w)))
        if self.name == "poly":
            base = max(1.0 - i / self.total, 0.0) ** self.power
        elif self.name == "multistep":
            base = self.gamma ** bisect.bisect_right(self.milestones, i)
        else:
            base = 1.0
        return base * self._warmup(i)

    def apply(self, optimizer, i: int) -> float:
        """Set every group's lr to its ``initial_lr`` times ``factor(i)``; returns the factor."""
        f = self.factor(i)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * f
        return f

    def state_dict(self) -> dict:
        return {"name": self.name, "total": self.total, "milestones": self.milestones,
                "warmup_iters": self.warmup_iters}
