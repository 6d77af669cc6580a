"""Service kinds for testing a deployment's failure handling.

Not registered as entry points: a workflow names them explicitly, e.g.
``uses: wakefield.testing:Flaky``.  ``Flaky`` fails, stalls or records its
effects on purpose, so tests (and users checking their own cluster) can see
retries, dead letters, redelivery and exactly-once effects happen.
``Analytic`` is a closed-form simulator for scans without a physics code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pydantic import Field

from .config import Duration, StrictModel
from .errors import ServiceError
from .events import Event
from .service import HandlerContext, Service
from .simulator import Batch, Coordinate, Simulator
from .variables import Output, Setting


class FlakyConfig(StrictModel):
    work: Duration = 0.0
    """Seconds each event takes."""
    fail_attempts: int = Field(default=0, ge=0)
    """Fail this many attempts of every event before succeeding."""
    fail_when: str | None = None
    """Always fail events whose data has this key set to true."""
    effects: str | None = None
    """Datastore folder where each handled event leaves one file (its effect)."""


class Flaky(Service):
    """Relays events, failing or stalling on purpose."""

    kind = "wakefield.testing:Flaky"
    Config = FlakyConfig
    summary = "Relay events after `work` seconds, failing on purpose (for tests)."
    inputs = {"in": "any event"}
    outputs = {"out": "the same data"}

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        config: FlakyConfig = self.config  # type: ignore[assignment]
        deadline = time.monotonic() + config.work
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if (
            config.fail_when
            and isinstance(event.data, dict)
            and event.data.get(config.fail_when)
        ):
            raise ServiceError(f"event {event.id} asked to fail ({config.fail_when})")
        if ctx.attempt <= config.fail_attempts:
            raise ServiceError(f"attempt {ctx.attempt} of {event.id} fails on purpose")

        if config.effects:
            # One file per handling: a second handling of the same event would
            # leave a second file, so tests can count effects.
            stamp = f"{time.time_ns()}"
            ctx.datastore.write_file(
                event.id.encode(), f"{config.effects}/{event.id}.{stamp}"
            )
        ctx.emit("out", "org.wakefield.testing.done", event.data)


class AnalyticOptions(StrictModel):
    fail_above: float | None = None
    """Samples with x above this fail (to test per-sample status)."""
    nan_below: float | None = None
    """Samples with x below this give NaN (to test non-finite flagging)."""
    noise: float = 0.0
    """Gaussian noise added to y, drawn from the task's generator."""


class Analytic(Simulator):
    """A closed-form simulator: y = x^2 + z and a 2-D Gaussian image per sample.

    Fast and exact, for testing scans without physics codes.
    """

    name = "wakefield.testing:Analytic"
    Options = AnalyticOptions

    def settings(self) -> list[Setting]:
        return [
            Setting(name="x", unit="m", range=(-1.0, 1.0), default=0.0),
            Setting(name="z", unit="m", range=(0.0, 2.0), default=1.0),
        ]

    def outputs(self) -> list[Output]:
        return [
            Output(name="y", unit="m^2", description="x squared plus z"),
            Output(
                name="spot",
                unit="1",
                dims=("u", "v"),
                shape=(8, 8),
                description="Gaussian spot centred at (x, z - 1)",
            ),
        ]

    def coordinates(self) -> dict[str, Coordinate]:
        axis = np.linspace(-1.0, 1.0, 8)
        return {"u": Coordinate(axis, "m"), "v": Coordinate(axis, "m")}

    def simulate(
        self, settings: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> Batch:
        options: AnalyticOptions = self.options  # type: ignore[assignment]
        x, z = np.asarray(settings["x"]), np.asarray(settings["z"])
        y = x**2 + z + options.noise * rng.normal(size=x.shape)
        axis = np.linspace(-1.0, 1.0, 8)
        u, v = np.meshgrid(axis, axis, indexing="ij")
        spot = np.exp(
            -(
                (u[None] - x[:, None, None]) ** 2
                + (v[None] - (z - 1)[:, None, None]) ** 2
            )
            / 0.2
        )
        failures = {}
        if options.fail_above is not None:
            failures = {
                int(i): f"x = {x[i]:.3f} above {options.fail_above}"
                for i in np.flatnonzero(x > options.fail_above)
            }
        if options.nan_below is not None:
            y = np.where(x < options.nan_below, np.nan, y)
        return Batch({"y": y, "spot": spot}, failures)
