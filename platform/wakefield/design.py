"""Designs of experiments: where in the settings' ranges a scan samples.

Every design is seeded, so the same seed gives the same samples.  The
quasi-random designs come from ``scipy.stats.qmc``: Latin hypercube, Sobol
and Halton; ``random`` is uniform; ``grid`` is the full factorial with the
same number of points along each setting.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Literal

import numpy as np
from pydantic import Field, StrictBool
from scipy.stats import qmc

from .config import StrictModel
from .variables import Setting

log = logging.getLogger(__name__)

Method = Literal["grid", "random", "lhs", "sobol", "halton"]


class Design(StrictModel):
    """How to sample the settings."""

    method: Method = "sobol"
    samples: int = Field(default=1024, ge=1, le=10_000_000)
    """Samples in all; a grid uses the largest full grid not above this."""
    seed: int = Field(default=0, ge=0)
    scramble: StrictBool = True
    """Scramble Sobol and Halton points (recommended; needed for a seed to matter)."""
    repeats: int = Field(default=1, ge=1, le=1_000_000)
    """Samples at each design point, one after another: for simulators whose
    every run differs (shot noise), so that each point gets a distribution."""


def sample(design: Design, settings: list[Setting]) -> dict[str, np.ndarray]:
    """Setting name -> values, one per sample, inside each setting's range."""
    unit = unit_cube(design, len(settings))
    low = np.array([s.low for s in settings])
    high = np.array([s.high for s in settings])
    values = qmc.scale(unit, low, high) if settings else unit
    values = np.repeat(values, design.repeats, axis=0)
    return {s.name: values[:, i].astype(np.float64) for i, s in enumerate(settings)}


def unit_cube(design: Design, dims: int) -> np.ndarray:
    """Points in [0, 1]^dims, shape (samples, dims)."""
    if dims == 0:
        return np.empty((design.samples, 0))
    rng = np.random.default_rng(design.seed)
    match design.method:
        case "random":
            return rng.random((design.samples, dims))
        case "lhs":
            return np.asarray(
                qmc.LatinHypercube(d=dims, rng=rng).random(design.samples)
            )
        case "sobol":
            with warnings.catch_warnings():
                # Sobol balance wants powers of two; other counts are allowed.
                warnings.simplefilter("ignore", UserWarning)
                sobol = qmc.Sobol(d=dims, scramble=design.scramble, rng=rng)
                return np.asarray(sobol.random(design.samples))
        case "halton":
            halton = qmc.Halton(d=dims, scramble=design.scramble, rng=rng)
            return np.asarray(halton.random(design.samples))
        case "grid":
            points = max(1, math.floor(design.samples ** (1 / dims) + 1e-9))
            axis = np.linspace(0.0, 1.0, points) if points > 1 else np.array([0.5])
            mesh = np.meshgrid(*[axis] * dims, indexing="ij")
            grid = np.stack([m.ravel() for m in mesh], axis=1)
            if len(grid) != design.samples:
                log.info(
                    "grid of %s points per setting gives %s samples (asked %s)",
                    points,
                    len(grid),
                    design.samples,
                )
            return grid
    raise ValueError(f"unknown design method {design.method!r}")
