"""Plots people would rather look at than read, as PNG bytes.

Every function returns the PNG (or None when there is nothing to draw);
services write them beside their data in the datastore.  matplotlib runs
with its Agg backend, so no display is needed.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import xarray as xr

MAX_SCATTER_POINTS = 2000


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _label(var: xr.DataArray) -> str:
    unit = var.attrs.get("units")
    return f"{var.name} [{unit}]" if unit else str(var.name)


def _role(ds: xr.Dataset, role: str) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if v.attrs.get("role") == role]


def scan_scatter(
    ds: xr.Dataset, outputs: list[str] | None = None, max_outputs: int = 6
) -> bytes | None:
    """Each setting against a few scalar outputs; flagged samples in red."""
    settings = _role(ds, "setting")
    scalars = [
        n
        for n in _role(ds, "output")
        if ds[n].dims == ("sample",) and ds[n].dtype.kind == "f"
    ]
    outputs = (outputs or scalars)[:max_outputs]
    varying = [s for s in settings if float(ds[s].max() - ds[s].min()) > 0]
    if not varying or not outputs:
        return None
    plt = _pyplot()
    n = ds.sizes["sample"]
    pick = np.random.default_rng(0).choice(
        n, size=min(n, MAX_SCATTER_POINTS), replace=False
    )
    sub = ds.isel(sample=np.sort(pick)).load()
    ok = sub["status"].values == 0 if "status" in sub else np.ones(len(pick), bool)
    fig, axes = plt.subplots(
        len(outputs),
        len(varying),
        squeeze=False,
        figsize=(2.3 * len(varying), 1.9 * len(outputs)),
        sharex="col",
    )
    for row, out in enumerate(outputs):
        for col, setting in enumerate(varying):
            ax = axes[row][col]
            ax.scatter(sub[setting][ok], sub[out][ok], s=2, alpha=0.5, color="tab:blue")
            shown = ~ok & np.isfinite(sub[out].values)
            if shown.any():  # flagged samples that still have a value
                ax.scatter(sub[setting][shown], sub[out][shown], s=4, color="tab:red")
            if row == len(outputs) - 1:
                ax.set_xlabel(_label(sub[setting]), fontsize=7)
            if col == 0:
                ax.set_ylabel(_label(sub[out]), fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{ds.attrs.get('title', 'scan')}: settings against outputs "
        f"({len(pick)} of {n} samples; red: flagged)",
        fontsize=9,
    )
    return png(fig)


def scan_images(ds: xr.Dataset, count: int = 4) -> bytes | None:
    """The first image output (2-D per sample) for a few samples."""
    images = [n for n in _role(ds, "output") if len(ds[n].dims) == 3]
    if not images:
        return None
    name = images[0]
    plt = _pyplot()
    good = (
        np.flatnonzero(ds["status"].values == 0)
        if "status" in ds
        else np.arange(ds.sizes["sample"])
    )
    chosen = (
        good[np.linspace(0, len(good) - 1, min(count, len(good))).astype(int)]
        if len(good)
        else []
    )
    if not len(chosen):
        return None
    var = ds[name]
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(3 * len(chosen), 3), squeeze=False
    )
    ydim, xdim = str(var.dims[1]), str(var.dims[2])
    for ax, i in zip(axes[0], chosen, strict=False):
        image = var.isel(sample=int(i)).values
        extent = _extent(ds, xdim, ydim)
        ax.imshow(image.T, origin="lower", aspect="auto", extent=extent, cmap="viridis")
        ax.set_title(f"sample {int(i)}", fontsize=8)
        ax.set_xlabel(_coord_label(ds, ydim), fontsize=7)
        ax.set_ylabel(_coord_label(ds, xdim), fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(var.attrs.get("long_name", name), fontsize=9)
    return png(fig)


def _extent(ds: xr.Dataset, xdim: str, ydim: str) -> list[float] | None:
    if ydim in ds.coords and xdim in ds.coords:
        y, x = ds[ydim].values, ds[xdim].values
        return [float(y[0]), float(y[-1]), float(x[0]), float(x[-1])]
    return None


def _coord_label(ds: xr.Dataset, dim: str) -> str:
    return _label(ds[dim]) if dim in ds.coords else dim
