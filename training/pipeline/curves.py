"""Training curves: the numbers of each logged step that the progress page plots.

TRL logs `loss` every `logging_steps` (the platform asks for every step), DPO also `rewards/chosen`,
`rewards/rejected`, `rewards/margins` and `rewards/accuracies`. Kept free of torch so the web
process can read curves without loading the training stack.
"""

from __future__ import annotations

import math
from typing import Any

Point = dict[str, float]


def curve_point(step: int, logs: dict[str, Any]) -> Point | None:
    """The plotted numbers of one logged step (loss; DPO's rewards/*), or None without a loss."""
    if not _finite(logs.get("loss")):
        # The closing summary (train_loss, train_runtime) is not a step; a diverged step (nan,
        # inf) cannot be stored as JSON nor plotted.
        return None
    point = {"step": float(step)}
    for key, value in logs.items():
        if (key == "loss" or key.startswith("rewards/")) and _finite(value):
            point[key] = float(value)
    return point


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def curve_add(curve: list[Point], point: Point) -> list[Point]:
    """The curve with point appended; a resumed stage's steps replace those it logs again."""
    return [p for p in curve if p["step"] < point["step"]] + [point]
