"""Replicas that follow consumer lag.

A service with ``autoscale: {min, max, target_lag, interval, cooldown}``
is watched by the runner: every ``interval`` seconds it reads the lag of
the service's consumer group ``<workflow>.<service>`` on its input topics
(events published and not yet committed) and asks for

    replicas = ceil(lag / target_lag), kept within [min, max]

A change waits until ``cooldown`` seconds have passed since the last one,
so a burst does not make the replicas swing up and down while new actors
are still starting.  The runner carries the decision out with
:meth:`~wakefield.runtime.runner.Run.scale` and reports ``service.scaled``
on the status topic with the lag that led to it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from ..bus import Bus
from ..errors import BusError
from ..workflow import Autoscale, WorkflowBase

log = logging.getLogger(__name__)


def desired_replicas(lag: int, policy: Autoscale) -> int:
    """Replicas for ``lag`` waiting events: one per ``target_lag``, within bounds."""
    wanted = math.ceil(max(lag, 0) / policy.target_lag)
    return min(policy.max, max(policy.min, wanted))


@dataclass
class Decision:
    """Run ``replicas`` actors of ``service``; ``lag`` events were waiting."""

    service: str
    replicas: int
    lag: int


@dataclass
class _Watched:
    service: str
    group: str
    topics: list[str]
    policy: Autoscale
    next_check: float = 0.0
    last_change: float = -math.inf


class Autoscaler:
    """Decides the replicas of a workflow's autoscaled services from their lag."""

    def __init__(self, workflow: WorkflowBase, bus: Bus) -> None:
        self.bus = bus
        self.watched = [
            _Watched(
                svc.name,
                f"{workflow.name}.{svc.name}",
                sorted(svc.input_topics()),
                svc.autoscale,
            )
            for svc in workflow.spec.services
            if svc.autoscale is not None
        ]

    def __bool__(self) -> bool:
        return bool(self.watched)

    def decide(
        self, replicas: dict[str, int], now: float | None = None
    ) -> list[Decision]:
        """Changes due now, given the replicas each service runs at present."""
        now = time.monotonic() if now is None else now
        decisions = []
        for w in self.watched:
            if now < w.next_check:
                continue
            w.next_check = now + w.policy.interval
            try:
                lag = self.bus.lag(w.group, w.topics)
            except BusError as exc:
                log.warning("could not read the lag of %s: %s", w.group, exc)
                continue
            current = replicas.get(w.service, 0)
            wanted = desired_replicas(lag, w.policy)
            log.debug("lag of %s: %s, replicas %s -> %s", w.group, lag, current, wanted)
            if wanted == current or now - w.last_change < w.policy.cooldown:
                continue
            decisions.append(Decision(w.service, wanted, lag))
        return decisions

    def changed(self, service: str, now: float | None = None) -> None:
        """Note a change of ``service``'s replicas (by the scaler or by hand)."""
        for w in self.watched:
            if w.service == service:
                w.last_change = time.monotonic() if now is None else now
