"""The status topic: a run's life as events, and a summary of them.

Every run publishes on ``<workflow>.status``, keyed by run id:

=========================  =====================================================
type (after the prefix)    data
=========================  =====================================================
``run.started``            workflow, services and replicas, bus, datastore
``run.completed``          results per completion topic
``run.failed``             reason
``run.cancelled``          reason
``service.up``             service, replica, incarnation, restarted (bool)
``service.restarted``      service, replica, reason (what Ray said)
``service.failed``         service, replica, error
``service.scaled``         service, replicas
``progress``               service, replica, done, total, message
``deadlettered``           service, topic, partition, offset, error
``bus.retry``              service, attempt, delay, error
=========================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..events import Event

PREFIX = "org.wakefield.status."
TERMINAL = ("completed", "failed", "cancelled")


def status_type(kind: str) -> str:
    return PREFIX + kind


def status_kind(event: Event) -> str | None:
    return event.type.removeprefix(PREFIX) if event.type.startswith(PREFIX) else None


@dataclass
class ServiceStatus:
    replicas: int = 0
    up: set[int] = field(default_factory=set)
    restarts: int = 0
    last_restart_reason: str | None = None
    progress: dict[int, tuple[float, float, str]] = field(default_factory=dict)
    deadlettered: int = 0
    error: str | None = None

    def fraction(self) -> float | None:
        totals = [(d, t) for d, t, _ in self.progress.values() if t]
        if not totals:
            return None
        return sum(d for d, _ in totals) / sum(t for _, t in totals)


@dataclass
class RunStatus:
    """What the status events of one run say, folded together."""

    run_id: str
    state: str = "unknown"
    reason: str | None = None
    workflow: str | None = None
    started: str | None = None
    ended: str | None = None
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        kind = status_kind(event)
        data = event.data if isinstance(event.data, dict) else {}
        if kind is None:
            return
        svc = (
            self.services.setdefault(data["service"], ServiceStatus())
            if "service" in data
            else None
        )
        match kind:
            case "run.started":
                self.state = "running"
                self.workflow = data.get("workflow")
                self.started = event.time.isoformat()
                for name, replicas in data.get("replicas", {}).items():
                    self.services.setdefault(name, ServiceStatus()).replicas = replicas
            case "run.completed" | "run.failed" | "run.cancelled":
                self.state = kind.removeprefix("run.")
                self.reason = data.get("reason")
                self.results = data.get("results", {})
                self.ended = event.time.isoformat()
            case "service.up" if svc is not None:
                svc.up.add(int(data.get("replica", 0)))
            case "service.restarted" if svc is not None:
                svc.restarts += 1
                svc.last_restart_reason = data.get("reason")
            case "service.failed" if svc is not None:
                svc.error = data.get("error")
            case "service.scaled" if svc is not None:
                svc.replicas = int(data.get("replicas", svc.replicas))
                svc.up = {r for r in svc.up if r < svc.replicas}
            case "progress" if svc is not None:
                svc.progress[int(data.get("replica", 0))] = (
                    float(data.get("done", 0)),
                    float(data.get("total", 0)),
                    str(data.get("message", "")),
                )
            case "deadlettered" if svc is not None:
                svc.deadlettered += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "state": self.state,
            "reason": self.reason,
            "started": self.started,
            "ended": self.ended,
            "services": {
                name: {
                    "replicas": s.replicas,
                    "up": len(s.up),
                    "restarts": s.restarts,
                    "last_restart_reason": s.last_restart_reason,
                    "progress": s.fraction(),
                    "deadlettered": s.deadlettered,
                    "error": s.error,
                }
                for name, s in sorted(self.services.items())
            },
            "results": self.results,
        }
