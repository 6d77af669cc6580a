"""How good a surrogate is, measured on the held-out test samples.

For each scalar output: the mean absolute error in the output's unit and
as a percentage of the output's range (the training data's maximum minus
minimum), and the coefficient of determination R^2.  For an image: the
same over all pixels, the range being the training images' pixel range.
Learning curves keep each member's training and validation loss per epoch
(mean squared error of the scaled outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OutputError:
    """Test error of one output."""

    mae: float
    """Mean absolute error, in the output's unit."""
    mae_percent: float
    """Mean absolute error as a percentage of the output's range."""
    r2: float
    """Coefficient of determination, 1 for a perfect model."""
    range: float
    """The range the percentage refers to, in the output's unit."""
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "mae": self.mae,
            "mae_percent": self.mae_percent,
            "r2": self.r2,
            "range": self.range,
            "unit": self.unit,
        }


@dataclass
class Curve:
    """One member's losses per epoch."""

    train: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_epoch: int = 0
    """The epoch whose weights were kept (0-based)."""


@dataclass
class Metrics:
    """Everything measured while training and testing one surrogate."""

    outputs: dict[str, OutputError]
    image: OutputError | None
    curves: list[Curve]
    samples: dict[str, int]
    """Good samples in the training, validation and test parts."""
    seconds: float = 0.0
    """Wall-clock time of training, s."""
    evaluated_on: str = "test"
    """Which part the errors were measured on (``validation`` if the split
    keeps no test samples)."""

    def summary(self) -> dict[str, Any]:
        """The figures an event carries: worst and mean errors, epochs, time."""
        percents = [e.mae_percent for e in self.outputs.values()]
        finite = [p for p in percents if math.isfinite(p)]
        worst = max(
            self.outputs,
            key=lambda n: _nan_low(self.outputs[n].mae_percent),
            default=None,
        )
        r2 = [e.r2 for e in self.outputs.values() if math.isfinite(e.r2)]
        summary: dict[str, Any] = {
            "evaluated_on": self.evaluated_on,
            "samples": dict(self.samples),
            "max_mae_percent": max(finite) if finite else None,
            "mean_mae_percent": float(np.mean(finite)) if finite else None,
            "worst_output": worst,
            "min_r2": min(r2) if r2 else None,
            "mae_percent": {n: e.mae_percent for n, e in self.outputs.items()},
            "r2": {n: e.r2 for n, e in self.outputs.items()},
            "epochs": [len(c.train) for c in self.curves],
            "seconds": round(self.seconds, 3),
        }
        if self.image is not None:
            summary["image"] = self.image.to_dict()
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated_on": self.evaluated_on,
            "samples": dict(self.samples),
            "seconds": self.seconds,
            "outputs": {n: e.to_dict() for n, e in self.outputs.items()},
            "image": self.image.to_dict() if self.image is not None else None,
            "curves": [
                {
                    "train": c.train,
                    "validation": c.validation,
                    "best_epoch": c.best_epoch,
                }
                for c in self.curves
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        image = data.get("image")
        return cls(
            outputs={n: OutputError(**e) for n, e in data["outputs"].items()},
            image=OutputError(**image) if image else None,
            curves=[Curve(**c) for c in data["curves"]],
            samples={k: int(v) for k, v in data["samples"].items()},
            seconds=float(data.get("seconds", 0.0)),
            evaluated_on=str(data.get("evaluated_on", "test")),
        )


def _nan_low(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def output_error(
    true: FloatArray, predicted: FloatArray, span: float, unit: str = ""
) -> OutputError:
    """Errors of one output over matching arrays of true and predicted values."""
    true, predicted = (
        np.asarray(true, float).ravel(),
        np.asarray(predicted, float).ravel(),
    )
    mae = float(np.mean(np.abs(predicted - true))) if len(true) else math.nan
    percent = 100.0 * mae / span if span > 0 else math.nan
    residual = float(np.sum((true - predicted) ** 2))
    total = float(np.sum((true - true.mean()) ** 2)) if len(true) else 0.0
    r2 = 1.0 - residual / total if total > 0 else math.nan
    return OutputError(
        mae=mae, mae_percent=percent, r2=r2, range=float(span), unit=unit
    )
