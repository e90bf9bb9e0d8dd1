"""On which scale a change of a metric is judged: as a ratio B/A or as a difference B − A.

A ratio only means something for strictly positive quantities measured from zero: seconds, bytes,
tokens per second, speed-up factors. Scores (Matthews correlation, Pearson and Spearman, accuracy, F1),
agreement and fidelity figures, logit differences and shares can be zero or negative, or are bounded, and
for them B/A points the wrong way (CoLA's MCC from −0.017 to 0.046 is B/A = −2.7, "worse") or is
undefined (a step from 0). For those the signed difference gives the direction and its absolute value the
size. :func:`scale_of` is the one place that decides, per unit; ``compare``, ``regressions`` and the report
all use it. The direction of a change always comes from the signed difference (:func:`is_worse`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Scale = Literal["ratio", "difference"]

#: Units of strictly positive quantities measured from zero, judged by the ratio B/A. Every other unit
#: (``score``, ``ratio`` (shares such as agreement or padding waste), ``cosine``, ``logit``, ``abs``, no
#: unit) is judged by the difference B − A.
RATIO_UNITS = frozenset({"s", "seconds", "ms", "bytes", "tokens/s", "x", "instructions"})


def scale_of(unit: str | None) -> Scale:
    """``"ratio"`` for units in :data:`RATIO_UNITS`, ``"difference"`` for everything else."""
    return "ratio" if unit in RATIO_UNITS else "difference"


def change(before: float, after: float, scale: Scale) -> float:
    """The change on its scale: ``after / before`` (NaN unless both are positive) or ``after - before``."""
    if scale == "ratio":
        return after / before if before > 0 and after > 0 else float("nan")
    return after - before


def is_worse(before: float, after: float, direction: str) -> bool:
    """Whether ``after`` is worse than ``before``, from the sign of the difference (never from a ratio)."""
    return after > before if direction == "lower" else after < before


def exceeds(value: float, scale: Scale, *, relative: float, absolute: float) -> bool:
    """Whether a change is larger than its threshold: ``|B/A − 1| > relative`` on the ratio scale,
    ``|B − A| > absolute`` on the difference scale."""
    if not np.isfinite(value):
        return False
    return abs(value - 1) > relative if scale == "ratio" else abs(value) > absolute


def no_change(scale: Scale) -> float:
    """The value of :func:`change` when nothing changed: 1 for a ratio, 0 for a difference."""
    return 1.0 if scale == "ratio" else 0.0


def format_change(value: float, scale: Scale) -> str:
    """``1.146x`` for a ratio, ``+0.063`` for a difference, ``-`` when undefined."""
    if not np.isfinite(value):
        return "-"
    return f"{value:.3f}x" if scale == "ratio" else f"{value:+.4g}"
