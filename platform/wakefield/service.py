"""The service-kind interface: what a plug-in implements to run in a workflow.

A service kind is a class with a config model, named input and output
ports, and a handler.  The runtime hosts each instance on a Ray actor, feeds
it the events of the topics wired to its input ports, and publishes what
it emits on the topics wired to its output ports::

    class Doubler(Service):
        kind = "doubler"
        Config = DoublerConfig
        inputs = {"in": "events whose data holds a number"}
        outputs = {"out": "the number doubled"}

        def handle(self, event, port, ctx):
            ctx.emit("out", "org.example.doubled", {"value": 2 * event.data["value"]})

Register it in the ``wakefield.services`` entry-point group under its kind.

Handlers must be idempotent in effect: the runtime may hand the same event
to a handler again after a crash.  It helps: emitted events get ids derived
from the event that caused them, datasets written under
:meth:`HandlerContext.dataset_uri` are kept if already published, and an
event whose handling finished is never handed over again.
"""

from __future__ import annotations

import logging
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import StrictModel
from .datastore import Datastore
from .errors import EventError
from .events import DataRef, Event

log = logging.getLogger(__name__)

# Event types wakefield itself emits.
DATASET_READY = "org.wakefield.dataset.ready"
MODEL_READY = "org.wakefield.model.ready"
TICK = "org.wakefield.tick"


def dataset_of(event: Event, port: str = "datasets") -> DataRef:
    """The dataset an event on ``port`` refers to; an :class:`EventError`
    (so the event is dead-lettered) when it refers to none."""
    if event.dataref is None or event.dataref.kind != "dataset":
        raise EventError(
            f"event {event.id} ({event.type}) on {port} carries no dataset "
            f"reference; the {port} port takes {DATASET_READY}"
        )
    return event.dataref


@dataclass(frozen=True)
class ServiceContext:
    """What a service instance knows about where it runs."""

    workflow: str
    service: str
    run_id: str
    replica: int
    datastore: Datastore
    source: str
    """This service's CloudEvents source, ``wakefield://<workflow>/<service>``."""
    report: Callable[[str, dict[str, Any]], None] = field(
        repr=False, default=lambda kind, data: None
    )
    """Publishes a status event of this service (progress, warnings)."""

    def progress(self, done: float, total: float, message: str = "") -> None:
        """Report progress of long work on the run's status topic."""
        self.report("progress", {"done": done, "total": total, "message": message})

    def load_state(self, name: str) -> dict[str, Any]:
        """Small JSON state of this service in this run, kept across restarts."""
        from .runtime.ledger import Ledger

        ledger = Ledger(self.datastore, self.workflow, self.service)
        return ledger.state_of(f"{self.run_id}/{name}")

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Replace the state ``name`` (written whole, so a crash leaves old or new)."""
        from .runtime.ledger import Ledger

        ledger = Ledger(self.datastore, self.workflow, self.service)
        ledger.save_state(f"{self.run_id}/{name}", state)

    def is_handled(self, event_id: str) -> bool:
        """True once this service finished an event and recorded what it emitted."""
        from .runtime.ledger import Ledger

        entry = Ledger(self.datastore, self.workflow, self.service).get(event_id)
        return entry is not None and entry.state in ("emitting", "done")


@dataclass
class Emitted:
    """An event a handler emitted, waiting to be published."""

    port: str
    event: Event
    key: str | None


class HandlerContext:
    """Per-event helper handed to :meth:`Service.handle`."""

    def __init__(
        self,
        service: ServiceContext,
        event: Event | None,
        *,
        outputs: dict[str, str],
        attempt: int = 1,
    ) -> None:
        self.service = service
        self.event = event
        self.attempt = attempt
        self._outputs = outputs
        self.emitted: list[Emitted] = []

    @property
    def datastore(self) -> Datastore:
        return self.service.datastore

    @property
    def run_id(self) -> str:
        return (self.event.runid if self.event else None) or self.service.run_id

    def emit(
        self,
        port: str,
        type: str,
        data: Any = None,
        *,
        dataref: DataRef | None = None,
        key: str | None = None,
        subject: str | None = None,
        cause: Event | None = None,
    ) -> Event:
        """Queue an event for output ``port``; published after the handler returns.

        Events of a port the workflow does not wire to a topic are dropped
        (the workflow chose not to listen to them).  ``cause`` names another
        event this one answers (a deferred request): its id then derives
        from that event, whichever event's handler emits it.
        """
        if port not in self._outputs:
            raise KeyError(
                f"{self.service.service} has no output port {port!r}; "
                f"its ports are {sorted(self._outputs)}"
            )
        index = len(self.emitted) if cause is None else 0
        origin = cause if cause is not None else self.event
        if origin is not None:
            out = origin.caused(
                source=self.service.source,
                type=type,
                data=data,
                index=index,
                dataref=dataref,
                subject=subject,
            )
            out = out.model_copy(update={"runid": origin.runid or self.run_id})
        else:
            out = Event(
                source=self.service.source,
                type=type,
                data=data,
                dataref=dataref,
                subject=subject,
                runid=self.service.run_id,
            )
        self.emitted.append(Emitted(port, out, key if key is not None else self.run_id))
        return out

    def dataset_uri(self, name: str) -> str:
        """A datastore path for a dataset this event produces, the same on a retry."""
        cause = self.event.id if self.event is not None else "tick"
        return f"runs/{self.run_id}/{self.service.service}/{cause}/{name}"

    def progress(self, done: float, total: float, message: str = "") -> None:
        self.service.progress(done, total, message)


class Service(ABC):
    """Base of every service kind."""

    kind: ClassVar[str]
    """The name a workflow's ``uses:`` refers to."""
    version: ClassVar[str] = "1"
    Config: ClassVar[type[StrictModel]]
    """The pydantic model of this kind's ``config:`` block."""
    inputs: ClassVar[dict[str, str]] = {}
    """Input port name -> what events it takes."""
    outputs: ClassVar[dict[str, str]] = {}
    """Output port name -> what events it emits."""
    streaming: ClassVar[bool] = False
    """True for kinds that run until cancelled rather than finishing a batch."""
    summary: ClassVar[str] = ""

    def __init__(self, config: StrictModel, context: ServiceContext) -> None:
        self.config = config
        self.context = context

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Called once on the actor before the first event (load models here)."""

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:  # noqa: B027
        """Handle one event that arrived on input ``port``."""
        raise NotImplementedError(f"{type(self).__name__} takes no input events")

    def tick(self, ctx: HandlerContext) -> float | None:
        """For kinds that produce without input: do one step.

        Returns the seconds until the next call, or None when done.  Called
        only for kinds that override it.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources when the service stops."""

    @classmethod
    def render(cls, event: Event) -> str | None:
        """A few lines for people about an event this kind emitted (``wakefield run``
        prints them at the end of a run); None for the default one-line form."""
        return None

    @classmethod
    def has_tick(cls) -> bool:
        return cls.tick is not Service.tick
