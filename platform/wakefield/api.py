"""The Python API: the same verbs as the command line.

::

    import wakefield

    wf = wakefield.validate("workflows/hello.yaml")
    result = wakefield.run(wf)                       # embedded, in this process
    for event in wakefield.subscribe(wf, "hello.calibrated", count=3):
        print(event.data)
    wakefield.publish(wf, "trips.incoming", "org.example.trip", data={...})
    wakefield.status(wf, result.run_id)
    wakefield.cancel(wf, run_id)
    wakefield.scale(wf, run_id, "classifier", 3)
    sent = wakefield.submit("workflows/hello.yaml", ray_address="http://head:8265")
    wakefield.ray_job(sent.run_id, "http://head:8265")   # the Ray job, the replicas

Wherever a workflow is expected, a path to its YAML works too.  ``bus``
overrides the workflow's bus (``kafka://host:9092``, ``embedded://PATH``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bus import Bus, Delivered, open_bus
from .events import DataRef, Event
from .loader import load_workflow
from .runtime import cluster
from .runtime.runner import CONTROL, Run, RunResult, bus_url_of, run_workflow
from .runtime.status import RunStatus
from .workflow import WorkflowBase, kind_classes

WorkflowLike = WorkflowBase | str | Path


def validate(workflow: str | Path) -> WorkflowBase:
    """Load and check a workflow file; raises :class:`~wakefield.errors.WorkflowError`."""
    return load_workflow(workflow)


def run(workflow: WorkflowLike, **options: Any) -> RunResult:
    """Run a workflow embedded in this process until it completes, fails or is
    cancelled.  Options: ``bus_url``, ``datastore``, ``run_id``, ``resume``,
    ``ray_address``, ``timeout``, ``on_status``, ``on_result``."""
    return run_workflow(_workflow(workflow), **options)


def start(workflow: WorkflowLike, **options: Any) -> Run:
    """Start a run and return it without waiting (call ``.wait()`` later)."""
    handle = Run(_workflow(workflow), **options)
    handle.start()
    return handle


def connect(workflow: WorkflowLike | None = None, bus: str | None = None) -> Bus:
    """The bus of a workflow, or the one ``bus`` names."""
    if workflow is None:
        return open_bus(bus or "embedded://.wakefield/bus")
    return open_bus(bus_url_of(_workflow(workflow), bus))


def publish(
    workflow: WorkflowLike | None,
    topic: str,
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    run_id: str | None = None,
    dataref: DataRef | None = None,
    source: str = "wakefield://cli",
    subject: str | None = None,
    bus: str | None = None,
) -> tuple[Event, Delivered]:
    """Publish one event; returns it and where it was stored."""
    event = Event(
        source=source,
        type=type,
        data=data,
        dataref=dataref,
        runid=run_id,
        subject=subject,
    )
    connection = connect(workflow, bus)
    try:
        delivered = connection.producer().publish(topic, event, key=key or run_id)
    finally:
        connection.close()
    return event, delivered


def subscribe(
    workflow: WorkflowLike | None,
    *topics: str,
    start: str = "latest",
    run_id: str | None = None,
    type: str | None = None,
    count: int | None = None,
    timeout: float | None = None,
    bus: str | None = None,
) -> Iterator[Event]:
    """Yield events of ``topics`` as they arrive (``start``: earliest or latest)."""
    connection = connect(workflow, bus)
    consumer = connection.consumer(list(topics), group=None, start=start)  # type: ignore[arg-type]
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while count is None or seen < count:
            if deadline is not None and time.monotonic() >= deadline:
                return
            for record in consumer.poll(timeout=0.5, max_records=100):
                event = record.event
                if event is None:
                    continue
                if run_id is not None and event.runid != run_id:
                    continue
                if type is not None and event.type != type:
                    continue
                yield event
                seen += 1
                if count is not None and seen >= count:
                    return
    finally:
        consumer.close()
        connection.close()


def status(workflow: WorkflowLike, run_id: str, *, bus: str | None = None) -> RunStatus:
    """What the status topic says of a run."""
    wf = _workflow(workflow)
    connection = connect(wf, bus)
    summary = RunStatus(run_id)
    consumer = connection.consumer([wf.status_topic], group=None, start="earliest")
    try:
        while records := consumer.poll(timeout=0.5, max_records=1000):
            for record in records:
                if record.event is not None and record.event.runid == run_id:
                    summary.apply(record.event)
    finally:
        consumer.close()
        connection.close()
    return summary


def cancel(
    workflow: WorkflowLike,
    run_id: str,
    *,
    reason: str = "cancelled with wakefield cancel",
    bus: str | None = None,
) -> Event:
    """Ask a running run to stop; it finishes the events in hand first."""
    wf = _workflow(workflow)
    event, _ = publish(
        wf,
        wf.control_topic,
        CONTROL,
        {"action": "cancel", "reason": reason},
        run_id=run_id,
        bus=bus,
    )
    return event


def scale(
    workflow: WorkflowLike,
    run_id: str,
    service: str,
    replicas: int,
    *,
    bus: str | None = None,
) -> Event:
    """Ask a running run to run ``replicas`` actors of ``service``."""
    wf = _workflow(workflow)
    wf.service(service)  # raises KeyError for an unknown service
    if replicas < 0:
        raise ValueError("replicas cannot be negative")
    event, _ = publish(
        wf,
        wf.control_topic,
        CONTROL,
        {"action": "scale", "service": service, "replicas": replicas},
        run_id=run_id,
        bus=bus,
    )
    return event


def submit(workflow: str | Path, **options: Any) -> cluster.Submission:
    """Send a workflow file to a Ray cluster as a job that runs it there.
    Options: ``ray_address`` (required: the dashboard, ``http://HEAD:8265``),
    ``bus``, ``datastore``, ``run_id``, ``resume``, ``timeout``, ``command``,
    ``entrypoint_cpus``, ``env``, ``token`` (see
    :func:`wakefield.runtime.cluster.submit`)."""
    return cluster.submit(workflow, **options)


def ray_job(
    run_id: str, ray_address: str, *, token: str | None = None
) -> dict[str, Any]:
    """What Ray says of a run: its latest job (``job``, None if it was not
    submitted) and where its replicas live (``replicas``)."""
    return {
        "job": cluster.job_of_run(ray_address, run_id, token=token),
        "replicas": cluster.replicas(ray_address, run_id, token=token),
    }


def services() -> dict[str, dict[str, Any]]:
    """Every registered service kind: summary, ports and config schema."""
    return {
        name: {
            "summary": cls.summary or (cls.__doc__ or "").strip(),
            "version": cls.version,
            "streaming": cls.streaming,
            "inputs": cls.inputs,
            "outputs": cls.outputs,
            "config": cls.Config.model_json_schema(),
        }
        for name, cls in sorted(kind_classes().items())
    }


def _workflow(workflow: WorkflowLike) -> WorkflowBase:
    return workflow if isinstance(workflow, WorkflowBase) else load_workflow(workflow)
