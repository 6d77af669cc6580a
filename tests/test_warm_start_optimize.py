"""The safe objective and the local search of the warm-start service."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from wakefield.errors import ServiceError
from wakefield.services.warm_start.inverse import (
    InverseConfig,
    InverseModel,
    train_inverse,
)
from wakefield.services.warm_start.optimize import SafeObjective, Target, tune
from wakefield.variables import Setting

LOW, HIGH = np.array([-1.0, 0.0]), np.array([1.0, 2.0])


def quadratic(x: np.ndarray) -> np.ndarray:
    """Two outputs of two settings; the target below is met at x = (0.5, 1.2)."""
    return np.array([x[0] + x[1], x[0] * x[1]])


TARGETS = [Target("sum", 1.7, 0.01), Target("product", 0.6, 0.01)]


@pytest.mark.parametrize("method", ["nelder-mead", "powell", "cobyla"])
def test_search_reaches_the_target_and_stops(method: str) -> None:
    """Each derivative-free method gets every target within tolerance, then stops."""
    objective = SafeObjective(quadratic, TARGETS, LOW, HIGH, max_evaluations=2000)
    result = tune(objective, np.array([0.2, 1.6]), method)  # type: ignore[arg-type]
    assert result.converged
    assert np.all(np.abs(result.outputs - [1.7, 0.6]) <= 0.01)
    assert result.evaluations == len(result.trace)


def test_gradient_method_uses_the_jacobian() -> None:
    """L-BFGS-B with an exact Jacobian converges in few evaluations."""

    def with_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return quadratic(x), np.array([[1.0, 1.0], [x[1], x[0]]])

    objective = SafeObjective(quadratic, TARGETS, LOW, HIGH, gradient=with_grad)
    result = tune(objective, np.array([0.3, 1.5]), "l-bfgs-b")
    assert result.converged and result.evaluations < 60


def test_points_outside_the_limits_never_reach_the_evaluator() -> None:
    """Every point the evaluator sees lies inside the limits, clipped or refused."""
    seen: list[np.ndarray] = []

    def recording(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return quadratic(x)

    for policy in ("clip", "refuse"):
        objective = SafeObjective(
            recording,
            [Target("sum", 3.5, 0.01)],
            LOW,
            HIGH,
            out_of_bounds=policy,
            max_evaluations=200,
        )  # type: ignore[arg-type]
        objective(np.array([2.0, 0.0]))  # far outside in the first setting
        tune(objective, np.array([0.99, 1.99]), "nelder-mead", step=0.5)
        assert objective.clipped + objective.refused > 0
    stacked = np.array(seen)
    assert (stacked >= LOW - 1e-12).all() and (stacked <= HIGH + 1e-12).all()


def test_non_finite_values_become_a_penalty_and_the_result_is_never_worse() -> None:
    """NaN outputs are penalised; the best point is at least as good as the start."""

    def holes(x: np.ndarray) -> np.ndarray:
        return np.array([np.nan, np.nan]) if x[0] > 0.6 else quadratic(x)

    objective = SafeObjective(holes, TARGETS, LOW, HIGH, max_evaluations=300)
    result = tune(objective, np.array([0.2, 0.4]), "nelder-mead")
    assert np.isfinite(result.objective)
    assert result.objective <= result.start_objective


def test_a_search_without_any_finite_value_fails() -> None:
    """If the evaluator never gives a finite value, the search is an error."""
    objective = SafeObjective(
        lambda x: np.array([np.nan, np.nan]), TARGETS, LOW, HIGH, max_evaluations=30
    )
    with pytest.raises(ServiceError, match="no finite objective"):
        tune(objective, np.array([0.0, 1.0]), "nelder-mead")


def test_inverse_model_answers_any_subset_of_its_outputs() -> None:
    """Trained with hidden outputs, the inverse maps full and partial targets near
    settings that produce them; its files reload to the same predictions."""
    rng = np.random.default_rng(0)
    x = rng.uniform(LOW, HIGH, size=(3000, 2))
    y = np.array([quadratic(row) for row in x])
    ds = xr.Dataset(
        {
            "a": ("sample", x[:, 0], {"role": "setting"}),
            "b": ("sample", x[:, 1], {"role": "setting"}),
            "sum": ("sample", y[:, 0]),
            "product": ("sample", y[:, 1]),
            "status": ("sample", np.zeros(3000, "i1")),
        }
    )
    settings = [
        Setting(name="a", range=(-1, 1), default=0),
        Setting(name="b", range=(0, 2), default=1),
    ]
    model, metrics = train_inverse(
        ds,
        settings,
        ["sum", "product"],
        InverseConfig(epochs=60, layers=[64, 64], patience=20),
    )
    guess = model.predict({"sum": 1.7, "product": 0.6})
    assert np.abs(quadratic(guess) - [1.7, 0.6]).max() < 0.15
    partial = model.predict({"sum": 1.0})
    assert abs(quadratic(partial)[0] - 1.0) < 0.2
    again = InverseModel.from_files(model.to_files())
    np.testing.assert_allclose(again.predict({"sum": 1.7, "product": 0.6}), guess)
    assert metrics["epochs"] >= 1
