"""Local optimisation of settings toward target outputs, made safe.

The optimiser works in normalised coordinates u in [-1, 1]^d (each setting's
range mapped onto [-1, 1]), so one step size suits settings of any unit.
Between the optimiser and the evaluator stands :class:`SafeObjective`:

- every proposed point is checked against the settings' limits before the
  evaluator sees it, then clipped onto them (``clip``) or refused with a
  penalty (``refuse``), and logged either way;
- a non-finite objective becomes a penalty;
- evaluations are counted and traced, and the best point seen so far is
  kept, the starting point included, so the result is never worse than
  where the search began;
- the search stops as soon as every target is within its tolerance, or when
  the evaluation budget is spent.

The objective is the weighted mean of squared distances to the targets in
units of their tolerances: 1.0 means "on average at the edge of tolerance".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize

from wakefield.errors import ServiceError

log = logging.getLogger(__name__)

Method = Literal["nelder-mead", "powell", "cobyla", "l-bfgs-b"]
SCIPY_NAMES = {
    "nelder-mead": "Nelder-Mead",
    "powell": "Powell",
    "cobyla": "COBYLA",
    "l-bfgs-b": "L-BFGS-B",
}
PENALTY = 1e6

Evaluate = Callable[[np.ndarray], np.ndarray]
"""Settings (physical units, shape (d,)) -> target outputs (shape (k,))."""
EvaluateWithGradient = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Settings -> (outputs (k,), Jacobian d outputs / d settings (k, d))."""


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    tolerance: float
    """Absolute, in the output's unit; within it counts as reached."""
    weight: float = 1.0


class _Stop(Exception):
    """Ends the search early (reached, or out of budget)."""


@dataclass
class SafeObjective:
    evaluate: Evaluate
    targets: list[Target]
    low: np.ndarray
    high: np.ndarray
    out_of_bounds: Literal["clip", "refuse"] = "clip"
    max_evaluations: int = 500
    gradient: EvaluateWithGradient | None = None

    evaluations: int = 0
    clipped: int = 0
    refused: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    best_u: np.ndarray | None = None
    best_f: float = math.inf
    best_y: np.ndarray | None = None
    reached: bool = False

    def __post_init__(self) -> None:
        self._value = np.array([t.value for t in self.targets])
        self._tol = np.array([t.tolerance for t in self.targets])
        self._w = np.array([t.weight for t in self.targets])
        if (self._tol <= 0).any() or (self._w < 0).any():
            raise ServiceError("tolerances must be positive and weights non-negative")

    # Coordinates

    def to_settings(self, u: np.ndarray) -> np.ndarray:
        return self.low + (np.asarray(u, float) + 1.0) * 0.5 * (self.high - self.low)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return 2.0 * (np.asarray(x, float) - self.low) / span - 1.0

    def distances(self, y: np.ndarray) -> np.ndarray:
        """Signed distance to each target in units of its tolerance."""
        return (np.asarray(y, float) - self._value) / self._tol

    def objective_of(self, y: np.ndarray) -> float:
        d = self.distances(y)
        f = float(np.sum(self._w * d**2) / max(np.sum(self._w), 1e-12))
        return f if math.isfinite(f) else PENALTY

    # The guarded evaluation

    def _guard(self, u: np.ndarray) -> np.ndarray | None:
        u = np.asarray(u, float)
        outside = (u < -1.0 - 1e-12) | (u > 1.0 + 1e-12) | ~np.isfinite(u)
        if not outside.any():
            return u
        if self.out_of_bounds == "refuse":
            self.refused += 1
            log.info(
                "refused a point outside the limits in %s settings", int(outside.sum())
            )
            return None
        self.clipped += 1
        log.info("clipped a point onto the limits in %s settings", int(outside.sum()))
        return np.clip(np.nan_to_num(u, nan=0.0), -1.0, 1.0)

    def _record(self, u: np.ndarray, y: np.ndarray, f: float) -> None:
        self.evaluations += 1
        self.trace.append(
            {
                "evaluation": self.evaluations,
                "objective": f,
                "settings": self.to_settings(u).tolist(),
            }
        )
        if f < self.best_f:
            self.best_f, self.best_u, self.best_y = (
                f,
                u.copy(),
                np.asarray(y, float).copy(),
            )
        if np.all(np.abs(self.distances(y)) <= 1.0):
            self.reached = True
            raise _Stop("every target within tolerance")
        if self.evaluations >= self.max_evaluations:
            raise _Stop("evaluation budget spent")

    def __call__(self, u: np.ndarray) -> float:
        safe = self._guard(u)
        if safe is None:
            return PENALTY
        y = np.asarray(self.evaluate(self.to_settings(safe)), float)
        f = self.objective_of(y) if np.all(np.isfinite(y)) else PENALTY
        self._record(safe, y, f)
        return f

    def value_and_gradient(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        """For gradient methods: the objective and its gradient in u."""
        if self.gradient is None:
            raise ServiceError(
                "this evaluator gives no gradients; choose another method"
            )
        safe = self._guard(u)
        if safe is None:
            return PENALTY, np.zeros_like(np.asarray(u, float))
        y, jac = self.gradient(self.to_settings(safe))
        d = self.distances(y)
        f = self.objective_of(y) if np.all(np.isfinite(y)) else PENALTY
        # df/dx_j = 2 sum_i w_i d_i / tol_i * J_ij / sum w ; dx/du = (high - low) / 2
        df_dx = (
            2.0
            * (self._w * d / self._tol)
            @ np.asarray(jac, float)
            / max(np.sum(self._w), 1e-12)
        )
        grad = df_dx * 0.5 * (self.high - self.low)
        if not np.all(np.isfinite(grad)):
            grad = np.zeros_like(grad)
        self._record(safe, y, f)
        return f, grad


@dataclass
class TuneResult:
    settings: np.ndarray
    outputs: np.ndarray
    objective: float
    start_objective: float
    evaluations: int
    converged: bool
    clipped: int
    refused: int
    message: str
    trace: list[dict[str, Any]]
    start_index: int = 0
    """Which of the starting points the search began from."""


def tune(
    objective: SafeObjective,
    x0: np.ndarray,
    method: Method = "nelder-mead",
    step: float = 0.1,
) -> TuneResult:
    """Search from the best of the starting points ``x0`` and return the best
    point found.

    ``x0`` is one point (settings, physical units) or several (rows): each
    is evaluated (and counted), and the search starts from the best.
    """
    starts = np.atleast_2d(np.asarray(x0, float))
    message = "finished"
    best = 0
    try:
        values = [objective(np.clip(objective.to_unit(x), -1.0, 1.0)) for x in starts]
        best = int(np.argmin(values))
        u0 = np.clip(objective.to_unit(starts[best]), -1.0, 1.0)
        start = values[best]
        scipy_method = SCIPY_NAMES[method]
        bounds = [(-1.0, 1.0)] * len(u0)
        options: dict[str, Any] = {}
        if method == "nelder-mead":
            simplex = [u0] + [
                np.clip(
                    u0 + step * np.eye(len(u0))[i] * (1 if u0[i] < 0.5 else -1), -1, 1
                )
                for i in range(len(u0))
            ]
            options = {
                "initial_simplex": np.array(simplex),
                "adaptive": len(u0) > 2,  # dimension-dependent parameters (Gao and Han)
                "xatol": 1e-6,
                "fatol": 1e-9,
                "maxfev": objective.max_evaluations,
            }
        elif method == "powell":
            options = {
                "xtol": 1e-6,
                "ftol": 1e-9,
                "maxfev": objective.max_evaluations,
                "direc": np.eye(len(u0)) * step,
            }
        elif method == "cobyla":
            options = {"rhobeg": step, "maxiter": objective.max_evaluations}
        elif method == "l-bfgs-b":
            options = {"maxfun": objective.max_evaluations}
        if method == "l-bfgs-b":
            result = minimize(
                objective.value_and_gradient,
                u0,
                jac=True,
                method=scipy_method,
                bounds=bounds,
                options=options,
            )
        else:
            result = minimize(
                objective, u0, method=scipy_method, bounds=bounds, options=options
            )
        message = str(result.message)
    except _Stop as stop:
        message = str(stop)
        first = [entry["objective"] for entry in objective.trace[: len(starts)]]
        start = min(first, default=PENALTY)
        best = int(np.argmin(first)) if first else 0
    if (
        objective.best_u is None
        or not math.isfinite(objective.best_f)
        or objective.best_f >= PENALTY
    ):
        raise ServiceError(f"the search found no finite objective value ({message})")
    return TuneResult(
        settings=objective.to_settings(objective.best_u),
        outputs=np.asarray(objective.best_y),
        objective=objective.best_f,
        start_objective=float(start),
        evaluations=objective.evaluations,
        converged=objective.reached,
        clipped=objective.clipped,
        refused=objective.refused,
        message=message,
        trace=objective.trace,
        start_index=best,
    )
