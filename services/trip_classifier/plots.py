"""PNG plots of the trip classifier: confusion matrices, feature importances
and learning curves (matplotlib, Agg backend)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .metrics import ClassificationReport  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["plot_confusion", "plot_feature_importance", "plot_learning_curves"]


def plot_confusion(report: ClassificationReport, path: Path, *, title: str) -> Path:
    """The confusion matrix, normalised by row (the true class), as a PNG."""
    counts = np.asarray(report.confusion, dtype=float)
    rows = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    share = counts / rows
    size = 1.0 + 0.6 * len(report.classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(report.classes))
    ax.set_xticks(ticks, report.classes, rotation=45, ha="right")
    ax.set_yticks(ticks, report.classes)
    for i, j in np.ndindex(share.shape):
        if counts[i, j]:
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{title}\nmacro-F1 {report.macro_f1:.3f}, accuracy {report.accuracy:.3f}"
    )
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _save(fig, path)


def plot_feature_importance(
    names: Sequence[str], importances: npt.ArrayLike, path: Path, *, top: int = 25
) -> Path:
    """The ``top`` most important features of a tree model, as a PNG bar chart."""
    values = np.asarray(importances, dtype=float)
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(7.0, 0.3 * len(order) + 1.2))
    ax.barh(np.arange(len(order)), values[order], color="tab:blue")
    ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=8)
    ax.set_xlabel("mean decrease in impurity")
    ax.set_title("feature importance")
    return _save(fig, path)


def plot_learning_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Training and validation loss, and validation accuracies, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    loss.plot(epochs, [h["train_loss"] for h in history], label="training")
    loss.plot(epochs, [h["validation_loss"] for h in history], label="validation")
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy, cavity + fault")
    loss.legend()
    acc.plot(
        epochs, [h["validation_fault_accuracy"] for h in history], label="fault type"
    )
    acc.plot(epochs, [h["validation_cavity_accuracy"] for h in history], label="cavity")
    acc.set_xlabel("epoch")
    acc.set_ylabel("validation accuracy")
    acc.set_ylim(0.0, 1.02)
    acc.legend()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
