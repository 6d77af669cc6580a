"""Service kinds for testing a deployment's failure handling.

Not registered as entry points: a workflow names them explicitly, e.g.
``uses: wakefield.testing:Flaky``.  ``Flaky`` fails, stalls or records its
effects on purpose, so tests (and users checking their own cluster) can see
retries, dead letters, redelivery and exactly-once effects happen.
"""

from __future__ import annotations

import time

from pydantic import Field

from .config import Duration, StrictModel
from .errors import ServiceError
from .events import Event
from .service import HandlerContext, Service


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
        if config.fail_when and isinstance(event.data, dict) and event.data.get(config.fail_when):
            raise ServiceError(f"event {event.id} asked to fail ({config.fail_when})")
        if ctx.attempt <= config.fail_attempts:
            raise ServiceError(f"attempt {ctx.attempt} of {event.id} fails on purpose")

        if config.effects:
            # One file per handling: a second handling of the same event would
            # leave a second file, so tests can count effects.
            stamp = f"{time.time_ns()}"
            ctx.datastore.write_file(event.id.encode(), f"{config.effects}/{event.id}.{stamp}")
        ctx.emit("out", "org.wakefield.testing.done", event.data)
