"""Per-class metrics of the trip classifier and the gate a model must pass.

A trained model is promoted (published for the service to use) only if it
recalls every fault type at least as well as the gate's floor, and names
the faulted cavity often enough: a model that is good on average but blind
to one fault type is not promoted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from wakefield.config import StrictModel

log = logging.getLogger(__name__)

__all__ = [
    "ClassificationReport",
    "PromotionDecision",
    "PromotionGate",
    "classification_report",
    "promotion_decision",
]


@dataclass(frozen=True)
class ClassificationReport:
    """Precision, recall and F1 per class, their macro mean, and the confusion."""

    classes: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    macro_f1: float
    accuracy: float
    confusion: list[list[int]]
    """Rows are the true class, columns the predicted one."""

    def recall_of(self) -> dict[str, float]:
        return dict(zip(self.classes, self.recall, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "confusion": self.confusion,
        }


def classification_report(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, classes: Sequence[str]
) -> ClassificationReport:
    """Metrics of integer-coded predictions against the truth.

    Classes absent from both get zero precision, recall and F1 and are left
    out of the macro mean, which averages over the classes that occur in
    ``y_true``.
    """
    labels = np.arange(len(classes))
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(
        true, pred, labels=labels, zero_division=0
    )
    present = s > 0
    return ClassificationReport(
        classes=list(classes),
        precision=[float(v) for v in p],
        recall=[float(v) for v in r],
        f1=[float(v) for v in f],
        support=[int(v) for v in s],
        macro_f1=float(f[present].mean()) if present.any() else 0.0,
        accuracy=float((true == pred).mean()) if true.size else 0.0,
        confusion=confusion_matrix(true, pred, labels=labels).tolist(),
    )


class PromotionGate(StrictModel):
    """What a trained trip classifier must reach on held-out events."""

    min_fault_recall: float = Field(default=0.8, ge=0.0, le=1.0)
    """Floor on the recall of every fault type."""
    fault_recall_floors: dict[str, float] = {}
    """Floors for particular fault types, overriding ``min_fault_recall``."""
    min_cavity_accuracy: float = Field(default=0.8, ge=0.0, le=1.0)
    """Floor on the accuracy of the faulted-cavity label."""
    min_support: int = Field(default=1, ge=0)
    """Fault types with fewer held-out events than this are not judged."""


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    """Why it was not promoted; empty when it was."""


def promotion_decision(
    fault: ClassificationReport, cavity: ClassificationReport, gate: PromotionGate
) -> PromotionDecision:
    """Whether a model with these held-out metrics may be promoted."""
    reasons = []
    for name, recall, support in zip(
        fault.classes, fault.recall, fault.support, strict=True
    ):
        floor = gate.fault_recall_floors.get(name, gate.min_fault_recall)
        if support >= max(gate.min_support, 1) and recall < floor:
            reasons.append(
                f"recall of {name!r} is {recall:.3f} on {support} events, "
                f"below the floor {floor:.3f}"
            )
    if cavity.accuracy < gate.min_cavity_accuracy:
        reasons.append(
            f"cavity accuracy is {cavity.accuracy:.3f}, below the floor "
            f"{gate.min_cavity_accuracy:.3f}"
        )
    unknown = sorted(set(gate.fault_recall_floors) - set(fault.classes))
    if unknown:
        reasons.append(f"the gate names unknown fault types {unknown}")
    decision = PromotionDecision(promoted=not reasons, reasons=reasons)
    log.info("promotion: %s %s", decision.promoted, "; ".join(reasons))
    return decision
