"""Plots of a trained surrogate, as PNG bytes (matplotlib's Agg backend).

``learning_curve``: each member's training and validation loss per epoch;
``parity``: predicted against true for every scalar output on the held-out
samples; ``images``: true and predicted images for a few held-out samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wakefield.plots import _pyplot, png

from .data import FloatArray, Samples
from .metrics import Metrics
from .model import Prediction, SurrogateModel


def learning_curve(metrics: Metrics) -> bytes | None:
    """Training (solid) and validation (dashed) loss of every member."""
    if not metrics.curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, curve in enumerate(metrics.curves):
        color = f"C{i % 10}"
        epochs = np.arange(1, len(curve.train) + 1)
        ax.plot(epochs, curve.train, color=color, lw=1.2, label=f"member {i} training")
        ax.plot(
            epochs,
            curve.validation,
            color=color,
            lw=1.2,
            ls="--",
            label=f"member {i} validation",
        )
        ax.axvline(curve.best_epoch + 1, color=color, lw=0.6, alpha=0.4)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error (scaled)")
    ax.set_title("learning curves (vertical lines: weights kept)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return png(fig)


def parity(
    model: SurrogateModel, part: Samples, prediction: Prediction, metrics: Metrics
) -> bytes | None:
    """Predicted against true for every scalar output, one panel each."""
    outputs = model.outputs
    if not outputs or not len(part):
        return None
    plt = _pyplot()
    cols = min(5, len(outputs))
    rows = math.ceil(len(outputs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.5 * cols, 2.4 * rows), squeeze=False
    )
    for k, output in enumerate(outputs):
        ax = axes[k // cols][k % cols]
        true = part.y[:, k]
        predicted = prediction.mean[output.name]
        ax.scatter(true, predicted, s=3, alpha=0.5)
        low, high = (
            float(min(true.min(), predicted.min())),
            float(max(true.max(), predicted.max())),
        )
        ax.plot([low, high], [low, high], color="k", lw=0.7)
        error = metrics.outputs[output.name]
        unit = f" [{output.unit}]" if output.unit else ""
        ax.set_title(
            f"{output.name}{unit}\nMAE {error.mae_percent:.2f} %, R² {error.r2:.4f}",
            fontsize=7,
        )
        ax.tick_params(labelsize=5)
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    for k in range(len(outputs), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("true", fontsize=8)
    fig.supylabel("predicted", fontsize=8)
    fig.suptitle(f"predicted against true ({metrics.evaluated_on} samples)", fontsize=9)
    fig.tight_layout()
    return png(fig)


def images(
    model: SurrogateModel, part: Samples, prediction: Prediction, count: int = 4
) -> bytes | None:
    """True (top) and predicted (bottom) images for a few held-out samples;
    the image's first dimension runs up, its second to the right."""
    if model.image is None or part.image is None or prediction.image is None:
        return None
    n = len(part)
    if not n:
        return None
    chosen = np.unique(np.linspace(0, n - 1, min(count, n)).astype(int))
    plt = _pyplot()
    fig, axes = plt.subplots(
        2, len(chosen), figsize=(2.8 * len(chosen), 5.4), squeeze=False
    )
    extent = _extent(model)
    for c, i in enumerate(chosen):
        true: FloatArray = part.image[i]
        guess: FloatArray = prediction.image[i]
        top = float(max(true.max(), guess.max()))
        for r, (picture, label) in enumerate(((true, "true"), (guess, "predicted"))):
            ax = axes[r][c]
            ax.imshow(
                picture,
                origin="lower",
                aspect="auto",
                extent=extent,
                vmin=0.0 if top > 0 else None,
                vmax=top,
                cmap="viridis",
            )
            ax.set_title(f"sample {int(part.index[i])}: {label}", fontsize=7)
            ax.tick_params(labelsize=5)
    dims = model.image.dims
    units = model.variables.coord_units or {}
    fig.supxlabel(_axis(dims[1], units), fontsize=8)
    fig.supylabel(_axis(dims[0], units), fontsize=8)
    fig.suptitle(f"{model.image.name}: true against predicted", fontsize=9)
    return png(fig)


def _extent(model: SurrogateModel) -> Any:
    coords = model.variables.coords or {}
    assert model.image is not None
    first, second = model.image.dims
    if first in coords and second in coords:
        rows, cols = coords[first], coords[second]
        return [cols[0], cols[-1], rows[0], rows[-1]]
    return None


def _axis(dim: str, units: dict[str, str]) -> str:
    return f"{dim} [{units[dim]}]" if units.get(dim) else dim
