"""The service host: what runs inside each service actor.

One host runs one replica of one service.  Its loop thread polls the
service's input topics as a member of the consumer group
``<workflow>.<service>``; each event goes through these steps:

1. decode: an event that cannot be decoded is dead-lettered at once;
2. filter: an event of another run is skipped;
3. ledger: an event already handled is skipped, one whose outputs were
   recorded but perhaps not all published has them published again;
4. handle: the handler runs on a worker thread while the loop keeps
   polling with every partition paused, so the consumer stays in its group
   however long the work takes; a failure is retried with backoff, then the
   event is dead-lettered with its error;
5. emit: outputs are recorded in the ledger, published, and marked done;
6. commit: the event's offset is committed.

A crash anywhere loses nothing: uncommitted events are delivered again, and
the ledger keeps their effects from happening twice.  The loop starts in the
constructor, so an actor that Ray restarts resumes by itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

from ..bus import Record, open_bus
from ..datastore import Datastore
from ..errors import CommitError, WakefieldError
from ..events import Event
from ..service import HandlerContext, Service, ServiceContext
from ..workflow import WorkflowBase, kind_classes, workflow_model
from .ledger import Entry, Ledger
from .status import status_type

log = logging.getLogger(__name__)

DEADLETTER = "org.wakefield.deadletter"
POLL_SECONDS = 0.5


class ServiceHost:
    """One replica of one service, consuming, handling and emitting."""

    def __init__(
        self, document: dict[str, Any], service: str, replica: int, run: dict[str, Any]
    ) -> None:
        _configure_logging()
        self.workflow = _workflow(document)
        self.spec = self.workflow.service(service)
        self.replica = replica
        self.run_id: str = run["run_id"]
        self.incarnation = uuid.uuid4().hex[:12]
        self.restarted = _reconstructed()
        self.state = "starting"
        self.error: str | None = None
        self.counts = {"handled": 0, "skipped": 0, "deadlettered": 0, "retried": 0}
        self.busy_since: float | None = None

        self.bus = open_bus(run["bus_url"])
        self.producer = self.bus.producer()
        self.datastore = Datastore(run["datastore_root"])
        self.ledger = Ledger(self.datastore, self.workflow.name, service)
        # A resumed run goes on counting its ticks; a new run starts at 0.
        self._tick_key = f"{self.run_id}/tick-{self.replica}"
        self.group = f"{self.workflow.name}.{service}"
        self.source = f"wakefield://{self.workflow.name}/{service}"
        self.outputs = dict(self.spec.publish)
        self.inputs = self.spec.input_topics()
        self._last_progress = 0.0

        cls: type[Service] = kind_classes(_explicit(document))[self.spec.uses]
        self.kind = cls
        self.context = ServiceContext(
            self.workflow.name,
            service,
            self.run_id,
            replica,
            self.datastore,
            self.source,
            report=self.report,
        )
        self.service = cls(self.spec.config, self.context)
        self._stop = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"{service}-handler"
        )
        self._thread = threading.Thread(
            target=self._main, name=f"{service}-loop", daemon=True
        )
        self._thread.start()

    # Remote interface (called by the runner through Ray)

    def ping(self) -> dict[str, Any]:
        return {
            "service": self.spec.name,
            "replica": self.replica,
            "incarnation": self.incarnation,
            "restarted": self.restarted,
            "state": self.state,
            "error": self.error,
            "busy_for": time.monotonic() - self.busy_since if self.busy_since else 0.0,
            **self.counts,
        }

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Finish the event in hand (up to ``timeout`` s), leave the group, close."""
        self._stop.set()
        self._thread.join(timeout)
        return self.ping()

    def pid(self) -> int:
        return os.getpid()

    # Status

    def report(self, kind: str, data: dict[str, Any]) -> None:
        """Publish a status event of this service; progress at most 5 per second."""
        now = time.monotonic()
        if kind == "progress" and data.get("done") != data.get("total"):
            if now - self._last_progress < 0.2:
                return
            self._last_progress = now
        event = Event(
            source=self.source,
            type=status_type(kind),
            runid=self.run_id,
            data={"service": self.spec.name, "replica": self.replica, **data},
        )
        try:
            self.producer.publish(self.workflow.status_topic, event, key=self.run_id)
        except WakefieldError:
            log.warning(
                "could not publish status %s of %s", kind, self.spec.name, exc_info=True
            )

    # The loop

    def _main(self) -> None:
        consumer = None
        try:
            self.service.setup()
            if self.inputs:
                consumer = self.bus.consumer(
                    sorted(self.inputs),
                    group=self.group,
                    client_id=f"{self.spec.name}-{self.replica}",
                )
            self.state = "running"
            self.report(
                "service.up",
                {
                    "incarnation": self.incarnation,
                    "restarted": self.restarted,
                    "pid": os.getpid(),
                },
            )
            log.info(
                "service %s replica %s up (incarnation %s)",
                self.spec.name,
                self.replica,
                self.incarnation,
            )
            self._loop(consumer)
            self.state = "stopped"
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("service %s replica %s failed", self.spec.name, self.replica)
            self.report(
                "service.failed",
                {"error": self.error, "traceback": traceback.format_exc(limit=20)},
            )
        finally:
            if consumer is not None:
                consumer.close()
            try:
                self.service.close()
            finally:
                self._executor.shutdown(wait=False, cancel_futures=True)

    def _loop(self, consumer: Any) -> None:
        ticking = self.kind.has_tick()
        tick_state = self.ledger.state_of(self._tick_key) if ticking else {}
        tick_number = int(tick_state.get("next", 0))
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if ticking and time.monotonic() >= next_tick:
                delay = self._tick(consumer, tick_number)
                tick_number += 1
                if delay is None:
                    ticking = False
                    self.report(
                        "progress",
                        {
                            "done": tick_number,
                            "total": tick_number,
                            "message": "source finished",
                        },
                    )
                else:
                    next_tick = time.monotonic() + delay
            if consumer is None:
                wait = next_tick - time.monotonic() if ticking else POLL_SECONDS
                self._stop.wait(max(0.0, min(wait, POLL_SECONDS)))
                continue
            timeout = (
                max(0.0, min(POLL_SECONDS, next_tick - time.monotonic()))
                if ticking
                else POLL_SECONDS
            )
            for record in consumer.poll(timeout=timeout, max_records=1):
                self._process(consumer, record)
                if self._stop.is_set():
                    break

    def _tick(self, consumer: Any, number: int) -> float | None:
        cause = Event(
            id=f"{self.run_id}.{self.spec.name}.{self.replica}.tick.{number}",
            source=self.source,
            type="org.wakefield.tick",
            runid=self.run_id,
            data={"tick": number},
        )
        entry = self.ledger.get(cause.id)
        if entry is not None:
            self._finish_emitting(cause.id, entry)
            delay: float | None = entry.meta.get("delay")
        else:
            ctx = HandlerContext(self.context, cause, outputs=self.outputs)
            delay = self._wait_for(consumer, lambda: self.service.tick(ctx))
            self._emit(cause.id, ctx, meta={"delay": delay})
        self.ledger.save_state(self._tick_key, {"next": number + 1})
        return delay

    def _process(self, consumer: Any, record: Record) -> None:
        event = record.event
        if event is None:
            self._deadletter(
                record,
                None,
                {"type": "EventError", "message": record.error or "undecodable"},
                0,
            )
            self._commit(consumer, record)
            return
        if event.runid is not None and event.runid != self.run_id:
            log.debug("skipping %s of run %s", event.id, event.runid)
            self._commit(consumer, record)
            return

        entry = self.ledger.get(event.id)
        if entry is not None:
            if entry.state == "emitting":
                self._finish_emitting(event.id, entry)
            self.counts["skipped"] += 1
            self._commit(consumer, record)
            return

        port = self.inputs.get(record.topic, next(iter(self.spec.subscribe), ""))
        ctx = self._handle_with_retries(consumer, record, event, port)
        if ctx is not None:
            self._emit(event.id, ctx)
            self.counts["handled"] += 1
        self._commit(consumer, record)

    def _handle_with_retries(
        self, consumer: Any, record: Record, event: Event, port: str
    ) -> HandlerContext | None:
        policy = self.spec.retry
        delay = policy.backoff
        for attempt in range(1, policy.attempts + 1):
            ctx = HandlerContext(
                self.context, event, outputs=self.outputs, attempt=attempt
            )
            started = time.monotonic()
            try:
                self._wait_for(consumer, partial(self.service.handle, event, port, ctx))
                log.info(
                    "handled %s from %s[%s]@%s in %.3f s",
                    event.id,
                    record.topic,
                    record.partition,
                    record.offset,
                    time.monotonic() - started,
                )
                return ctx
            except Exception as exc:  # a failure is data: retried, then dead-lettered
                error = {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": traceback.format_exc(limit=20),
                    "seconds": round(time.monotonic() - started, 6),
                }
                log.warning(
                    "attempt %s/%s on %s failed: %s",
                    attempt,
                    policy.attempts,
                    event.id,
                    exc,
                )
                if attempt == policy.attempts or self._stop.is_set():
                    self._deadletter(record, event, error, attempt)
                    self.ledger.put(
                        event.id, Entry("deadlettered", meta={"error": error})
                    )
                    return None
                self.counts["retried"] += 1
                self._wait_for(consumer, partial(time.sleep, delay))
                delay = min(delay * policy.multiplier, policy.max_backoff)
        return None

    def _wait_for(self, consumer: Any, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the handler thread, polling (all paused) meanwhile."""
        future = self._executor.submit(work)
        self.busy_since = time.monotonic()
        try:
            if consumer is None:
                return future.result()
            paused = consumer.assignment()
            consumer.pause(paused)
            try:
                while True:
                    try:
                        return future.result(timeout=POLL_SECONDS)
                    except concurrent.futures.TimeoutError:
                        pass
                    # Still working: poll (everything paused) to stay in the group.
                    for stray in consumer.poll(timeout=0.0, max_records=1):
                        # A partition assigned meanwhile: put its record back.
                        consumer.seek(stray.tp, stray.offset)
                        consumer.pause([stray.tp])
                        paused.add(stray.tp)
            finally:
                consumer.resume(paused)
        finally:
            self.busy_since = None

    def _emit(
        self, cause_id: str, ctx: HandlerContext, meta: dict[str, Any] | None = None
    ) -> None:
        outputs = [
            (self.outputs[e.port], e.key, e.event.to_json().decode())
            for e in ctx.emitted
            if e.port in self.outputs
        ]
        entry = Entry("emitting", outputs, meta or {})
        self.ledger.put(cause_id, entry)
        self._finish_emitting(cause_id, entry)

    def _finish_emitting(self, cause_id: str, entry: Entry) -> None:
        if entry.state != "emitting":
            return
        self.producer.publish_many(entry.events())
        entry.state = "done"
        self.ledger.put(cause_id, entry)

    def _deadletter(
        self, record: Record, event: Event | None, error: dict[str, Any], attempts: int
    ) -> None:
        data = {
            "service": self.spec.name,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "attempts": attempts,
            "error": error,
            "event": event.model_dump(mode="json") if event is not None else None,
            "raw": None
            if event is not None
            else record.raw.decode("utf-8", "replace")[:65536],
        }
        if event is not None:
            letter = event.caused(source=self.source, type=DEADLETTER, data=data)
        else:
            letter = Event(
                source=self.source, type=DEADLETTER, data=data, runid=self.run_id
            )
        self.producer.publish(self.workflow.deadletter_topic, letter, key=record.key)
        self.counts["deadlettered"] += 1
        self.report(
            "deadlettered",
            {k: data[k] for k in ("topic", "partition", "offset", "attempts")}
            | {
                "error": f"{error['type']}: {error['message']}",
                "event": event.id if event else None,
            },
        )
        log.error(
            "dead-lettered %s[%s]@%s after %s attempts: %s",
            record.topic,
            record.partition,
            record.offset,
            attempts,
            error["message"],
        )

    def _commit(self, consumer: Any, record: Record) -> None:
        try:
            consumer.commit(record)
        except CommitError as exc:
            # The partition moved; its new owner handles the event again and
            # the ledger keeps the effect single.
            log.warning("%s", exc)


def _workflow(document: dict[str, Any]) -> WorkflowBase:
    return workflow_model(_explicit(document)).model_validate(document)


def _explicit(document: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        sorted({s["uses"] for s in document["spec"]["services"] if ":" in s["uses"]})
    )


def _reconstructed() -> bool:
    try:
        import ray

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its implementation uses a deprecated call
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor (tests of the host alone)
        return False


def _configure_logging() -> None:
    level = os.environ.get("WAKEFIELD_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("wakefield").setLevel(level)
