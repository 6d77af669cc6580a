"""Running a workflow: topics, actors, start events, and watching to the end.

A :class:`Run` creates the workflow's topics, starts one Ray actor per
replica of each service, publishes the start events (a resumed run does
not), and then watches:

- the completion topics, counting this run's events until every condition
  of ``spec.complete`` holds (a run without one streams until cancelled);
- the status topic, for progress, dead letters and failed services;
- the control topic, where ``wakefield cancel`` and ``wakefield scale``
  from any process leave their commands;
- the actors themselves, pinged every second: an actor Ray is restarting
  is reported with the reason Ray gives;
- the lag of services with ``autoscale``, whose replicas follow it
  (see :mod:`wakefield.runtime.autoscale`).

Replicas are placed with Ray's SPREAD strategy, so on a cluster of several
nodes a service's replicas run on different nodes where they can, and
losing one node stops only some of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..bus import Bus, TopicSpec, open_bus
from ..datastore import Datastore
from ..errors import RunCancelled, RuntimeFailure, WakefieldError
from ..events import Event
from ..workflow import EmbeddedBusSpec, KafkaBusSpec, WorkflowBase, topic_specs
from .autoscale import Autoscaler
from .host import ServiceHost
from .status import RunStatus, status_kind, status_type

log = logging.getLogger(__name__)

RAY_NAMESPACE = "wakefield"
PING_SECONDS = 1.0
CONTROL = "org.wakefield.control"


@dataclass
class RunResult:
    """How a run ended, and what arrived on its completion topics."""

    run_id: str
    workflow: str
    state: str
    reason: str | None = None
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0
    datastore: str = ""
    bus: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "completed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "state": self.state,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "datastore": self.datastore,
            "bus": self.bus,
            "results": self.results,
            "status": self.status,
        }


def new_run_id(workflow: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{workflow}-{stamp}-{uuid.uuid4().hex[:4]}"


def bus_url_of(workflow: WorkflowBase, override: str | None = None) -> str:
    """The bus a run uses: ``--bus`` if given, else the workflow's."""
    if override:
        return (
            override
            if "://" not in override or not override.startswith("embedded://")
            else (
                "embedded://"
                + str(Path(override.removeprefix("embedded://")).resolve())
            )
        )
    bus = workflow.spec.bus
    if isinstance(bus, KafkaBusSpec):
        return "kafka://" + ",".join(bus.bootstrap)
    assert isinstance(bus, EmbeddedBusSpec)
    return "embedded://" + str(Path(bus.path).resolve())


def datastore_of(workflow: WorkflowBase, override: str | None = None) -> str:
    root = override or workflow.spec.datastore.root
    return root if "://" in root else str(Path(root).resolve())


class Run:
    """One execution of a workflow."""

    def __init__(
        self,
        workflow: WorkflowBase,
        *,
        document: dict[str, Any] | None = None,
        bus_url: str | None = None,
        datastore: str | None = None,
        run_id: str | None = None,
        resume: bool = False,
        ray_address: str | None = None,
        timeout: float | None = None,
        on_status: Callable[[Event], None] | None = None,
        on_result: Callable[[str, Event], None] | None = None,
    ) -> None:
        self.workflow = workflow
        self.document = document or workflow.model_dump(mode="json", by_alias=True)
        self.bus_url = bus_url_of(workflow, bus_url)
        self.datastore_root = datastore_of(workflow, datastore)
        self.resume = resume
        if resume and not run_id:
            raise WakefieldError("resuming a run needs its run id")
        self.run_id = run_id or new_run_id(workflow.name)
        self.ray_address = ray_address
        complete = workflow.spec.complete
        self.timeout = (
            timeout if timeout is not None else (complete.timeout if complete else None)
        )
        self._timeout_origin = (
            "--timeout" if timeout is not None else "spec.complete.timeout"
        )
        self.on_status = on_status
        self.on_result = on_result
        self.status = RunStatus(self.run_id)
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.actors: dict[str, list[Any]] = {}
        self._down: dict[tuple[str, int], str] = {}
        self._seen: set[str] = set()
        self._cancel = threading.Event()
        self._cancel_reason = "cancelled"
        self._failure: str | None = None
        self._bus: Bus | None = None
        self._autoscaler: Autoscaler | None = None
        self._started = 0.0

    # Life

    def start(self) -> None:
        """Create topics, start the actors, publish the start events."""
        self._started = time.monotonic()
        self._bus = bus = open_bus(self.bus_url)
        Datastore(self.datastore_root)  # creates a local root, checks the URL
        create = getattr(self.workflow.spec.bus, "create_topics", True)
        replication = getattr(self.workflow.spec.bus, "replication", 1)
        bus.ensure_topics(
            [
                TopicSpec(t.name, t.partitions, t.replication or replication)
                for t in topic_specs(self.workflow).values()
            ],
            create=create,
        )
        self._producer = bus.producer()
        self._autoscaler = Autoscaler(self.workflow, bus)
        self._watch = bus.consumer(self._watched_topics(), group=None, start="earliest")
        # Commands count from now on: a resumed run must not obey its old "cancel".
        self._control = bus.consumer(
            [self.workflow.control_topic], group=None, start="latest"
        )

        _ensure_ray(self.ray_address, self._cpus_needed())
        run = {
            "run_id": self.run_id,
            "bus_url": self.bus_url,
            "datastore_root": self.datastore_root,
        }
        replicas = {s.name: s.replicas for s in self.workflow.spec.services}
        self._publish_status(
            "run.started",
            {
                "workflow": self.workflow.name,
                "replicas": replicas,
                "bus": self.bus_url,
                "datastore": self.datastore_root,
                "resume": self.resume,
            },
        )
        for svc in self.workflow.spec.services:
            self.actors[svc.name] = [
                self._actor(svc, i, run) for i in range(svc.replicas)
            ]
        log.info(
            "run %s started %s actors", self.run_id, sum(map(len, self.actors.values()))
        )

        if not self.resume:
            for i, start in enumerate(self.workflow.spec.start):
                event = Event(
                    id=f"{self.run_id}.start.{i}",
                    source=f"wakefield://{self.workflow.name}",
                    type=start.type,
                    data=start.data,
                    subject=start.subject,
                    runid=self.run_id,
                    correlationid=self.run_id,
                )
                self._producer.publish(start.topic, event, key=start.key or self.run_id)

    def wait(self) -> RunResult:
        """Watch the run until it completes, fails or is cancelled."""
        state, reason = "running", None
        next_ping = 0.0
        try:
            while True:
                self._drain()
                if self._cancel.is_set():
                    state, reason = "cancelled", self._cancel_reason
                    break
                if self._failure:
                    state, reason = "failed", self._failure
                    break
                if self._complete():
                    state = "completed"
                    break
                if (
                    self.timeout is not None
                    and time.monotonic() - self._started > self.timeout
                ):
                    state, reason = (
                        "failed",
                        f"not complete after {self.timeout:.0f} s ({self._timeout_origin})",
                    )
                    break
                if time.monotonic() >= next_ping:
                    self._ping()
                    next_ping = time.monotonic() + PING_SECONDS
                self._autoscale()
        except KeyboardInterrupt:
            state, reason = "cancelled", "interrupted (Ctrl-C)"
        self.stop()
        self._publish_status(
            f"run.{state}",
            {
                "reason": reason,
                "results": {
                    topic: len(events) for topic, events in self.results.items()
                },
            },
        )
        self._drain()
        self._watch.close()
        self._control.close()
        return RunResult(
            self.run_id,
            self.workflow.name,
            state,
            reason,
            dict(self.results),
            time.monotonic() - self._started,
            self.datastore_root,
            self.bus_url,
            self.status.to_dict(),
        )

    def cancel(self, reason: str = "cancelled") -> None:
        self._cancel_reason = reason
        self._cancel.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every actor: finish the event in hand, leave the groups."""
        import ray

        handles = [a for actors in self.actors.values() for a in actors]
        pending = [a.stop.remote(timeout) for a in handles]
        with contextlib.suppress(Exception):
            ray.wait(pending, num_returns=len(pending), timeout=timeout + 5)
        for actor in handles:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = {}

    def scale(
        self, service: str, replicas: int, details: dict[str, Any] | None = None
    ) -> None:
        """Add or remove replicas of a running service; ``details`` (why)
        go into the ``service.scaled`` status event."""
        import ray

        svc = self.workflow.service(service)
        current = self.actors.get(service, [])
        run = {
            "run_id": self.run_id,
            "bus_url": self.bus_url,
            "datastore_root": self.datastore_root,
        }
        if replicas > len(current):
            current += [self._actor(svc, i, run) for i in range(len(current), replicas)]
        else:
            for actor in current[replicas:]:
                with contextlib.suppress(Exception):
                    ray.get(actor.stop.remote(10.0), timeout=20)
                    ray.kill(actor, no_restart=True)
            del current[replicas:]
        self.actors[service] = current
        if self._autoscaler is not None:
            self._autoscaler.changed(service)
        self._publish_status(
            "service.scaled",
            {"service": service, "replicas": replicas, **(details or {})},
        )
        log.info("scaled %s to %s replicas", service, replicas)

    def _autoscale(self) -> None:
        if not self._autoscaler:
            return
        current = {name: len(actors) for name, actors in self.actors.items()}
        for decision in self._autoscaler.decide(current):
            try:
                self.scale(
                    decision.service,
                    decision.replicas,
                    {"lag": decision.lag, "by": "autoscale"},
                )
            except Exception:  # a failed change is tried again at the next check
                log.warning(
                    "autoscaling %s to %s replicas failed",
                    decision.service,
                    decision.replicas,
                    exc_info=True,
                )

    # Actors

    def _actor(self, svc: Any, replica: int, run: dict[str, Any]) -> Any:
        import ray

        options: dict[str, Any] = {
            "name": f"{self.run_id}:{svc.name}:{replica}",
            "namespace": RAY_NAMESPACE,
            "max_restarts": svc.max_restarts,
            "max_concurrency": 4,  # ping and stop answer while the loop works
            "num_cpus": svc.resources.cpu,
            "num_gpus": svc.resources.gpu,
            # Replicas on different nodes where there are several.
            "scheduling_strategy": "SPREAD",
        }
        if svc.resources.memory:
            options["memory"] = svc.resources.memory
        return (
            ray.remote(ServiceHost)
            .options(**options)
            .remote(self.document, svc.name, replica, run)
        )

    def _ping(self) -> None:
        import ray

        calls = {
            a.ping.remote(): (name, i)
            for name, actors in self.actors.items()
            for i, a in enumerate(actors)
        }
        if not calls:
            return
        ready, _ = ray.wait(
            list(calls), num_returns=len(calls), timeout=PING_SECONDS * 3
        )
        for ref in ready:
            name, replica = calls[ref]
            try:
                info = ray.get(ref)
            except ray.exceptions.ActorDiedError as exc:
                self._fail(
                    f"service {name} replica {replica} died and will not restart: "
                    f"{_first_line(exc)}"
                )
                continue
            except (
                ray.exceptions.ActorUnavailableError,
                ray.exceptions.RayActorError,
            ) as exc:
                self._down.setdefault((name, replica), _first_line(exc))
                continue
            if info["state"] == "failed" and self.workflow.spec.complete is not None:
                self._fail(f"service {name} failed: {info['error']}")

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason

    # Watching the topics

    def _watched_topics(self) -> list[str]:
        topics = {self.workflow.status_topic}
        if self.workflow.spec.complete:
            topics.update(c.topic for c in self.workflow.spec.complete.when)
        return sorted(topics)

    def _drain(self) -> None:
        records = self._control.poll(timeout=0.0, max_records=100)
        records += self._watch.poll(timeout=0.1, max_records=500)
        for record in records:
            event = record.event
            if event is None or event.runid != self.run_id or event.id in self._seen:
                continue
            self._seen.add(event.id)
            if record.topic == self.workflow.status_topic:
                self.status.apply(event)
                self._on_status(event)
            elif record.topic == self.workflow.control_topic:
                self._on_control(event)
            else:
                self.results[record.topic].append(
                    event.model_dump(mode="json", exclude_none=True)
                )
                if self.on_result is not None:
                    self.on_result(record.topic, event)

    def _on_status(self, event: Event) -> None:
        kind = status_kind(event)
        data = event.data if isinstance(event.data, dict) else {}
        complete = self.workflow.spec.complete
        if kind == "service.up" and data.get("restarted"):
            # Ray restarted the actor; a ping that failed meanwhile may know why.
            key = (str(data.get("service")), int(data.get("replica", 0)))
            reason = self._down.pop(
                key, "its process ended unexpectedly (killed or crashed)"
            )
            self._publish_status(
                "service.restarted",
                {"service": key[0], "replica": key[1], "reason": reason},
            )
            log.warning("service %s replica %s restarted: %s", key[0], key[1], reason)
        if (
            kind == "deadlettered"
            and complete is not None
            and complete.fail_on_deadletter
        ):
            self._fail(
                f"an event was dead-lettered by {data.get('service')}: {data.get('error')}"
            )
        if self.on_status is not None:
            self.on_status(event)

    def _on_control(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        action = data.get("action")
        if action == "cancel":
            self.cancel(str(data.get("reason") or "cancelled with wakefield cancel"))
        elif action == "scale":
            try:
                self.scale(str(data["service"]), int(data["replicas"]))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("ignored scale command %s: %s", event.id, exc)
        else:
            log.error("ignored unknown control command %r in %s", action, event.id)

    def _complete(self) -> bool:
        complete = self.workflow.spec.complete
        if complete is None:
            return False
        for cond in complete.when:
            events = [
                e
                for e in self.results.get(cond.topic, [])
                if cond.type is None or e.get("type") == cond.type
            ]
            if len(events) < cond.count:
                return False
        return True

    def _publish_status(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(
            source=f"wakefield://{self.workflow.name}",
            type=status_type(kind),
            runid=self.run_id,
            data=data,
        )
        try:
            self._producer.publish(self.workflow.status_topic, event, key=self.run_id)
        except WakefieldError:
            log.warning("could not publish status %s", kind, exc_info=True)

    def _cpus_needed(self) -> float:
        return float(
            sum(s.resources.cpu * s.replicas for s in self.workflow.spec.services)
        )


def run_workflow(workflow: WorkflowBase, **options: Any) -> RunResult:
    """Run a workflow to its end in this process (see :class:`Run`)."""
    run = Run(workflow, **options)
    run.start()
    # After start: ray.init, inside it, puts a SIGTERM handler of its own
    # (exit at once) in place of any set before.
    with _cancel_on_signals(run):
        return run.wait()


@contextlib.contextmanager
def _cancel_on_signals(run: Run) -> Iterator[None]:
    """SIGTERM cancels the run cleanly (SIGINT arrives as KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(
        signal.SIGTERM, lambda *_: run.cancel("terminated (SIGTERM)")
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ensure_ray(address: str | None, cpus_for_services: float) -> None:
    """Connect to a Ray cluster, or start a local one sized for the run."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    # Actors hold logical CPUs for their lifetime; the cores stay free for
    # the tasks they fan out.
    ray.init(
        num_cpus=int(cores + cpus_for_services + 1),
        include_dashboard=False,
        namespace=RAY_NAMESPACE,
        log_to_driver=True,
        logging_level=logging.WARNING,
        _temp_dir=_short_temp_dir(),
    )


def _short_temp_dir() -> str:
    # Ray puts Unix sockets here; their paths must stay short.
    path = Path(tempfile.gettempdir()) / f"wf-ray-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "Run",
    "RunCancelled",
    "RunResult",
    "RuntimeFailure",
    "new_run_id",
    "run_workflow",
]
