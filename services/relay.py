"""``relay``: pass events on from one topic to another.

It re-emits each event's data and reference under a new type, after an
optional pause that stands in for work (useful to test wiring, back-pressure
and the cost of the platform itself).
"""

from __future__ import annotations

import time

from wakefield.config import Duration, StrictModel
from wakefield.events import Event
from wakefield.service import HandlerContext, Service


class RelayConfig(StrictModel):
    type: str | None = None
    """Type of the emitted events; absent: the incoming event's type."""
    work: Duration = 0.0
    """Seconds to spend on each event before passing it on."""


class Relay(Service):
    """Passes each event on, optionally after some work."""

    kind = "relay"
    Config = RelayConfig
    summary = "Pass each event on to another topic (optionally after `work` seconds)."
    inputs = {"in": "any event"}
    outputs = {"out": "the same data and reference"}

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        config: RelayConfig = self.config  # type: ignore[assignment]
        if config.work:
            time.sleep(config.work)
        ctx.emit(
            "out",
            config.type or event.type,
            event.data,
            dataref=event.dataref,
            subject=event.subject,
        )
