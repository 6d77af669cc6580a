"""The runtime on real Ray actors and the embedded bus: data by reference,
another process following along, crashes, dead letters, cancel, resume
and scaling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

import wakefield.api as api
from wakefield.bus import open_bus
from wakefield.datastore import Datastore
from wakefield.events import Event
from wakefield.loader import loads_workflow
from wakefield.runtime.runner import Run, bus_url_of

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]


def _workflow(text: str) -> Any:
    return loads_workflow(textwrap.dedent(text), filename="test.yaml")


def _events(bus_url: str, topic: str, run_id: str | None = None) -> list[Event]:
    bus = open_bus(bus_url)
    consumer = bus.consumer([topic], group=None, start="earliest")
    out = []
    while records := consumer.poll(timeout=0.3, max_records=1000):
        out += [
            r.event
            for r in records
            if r.event and (run_id is None or r.event.runid == run_id)
        ]
    consumer.close()
    return out


def _wait(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


HELLO = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: hello}
    spec:
      services:
        - name: source
          uses: ticker
          config: {interval: 0.2, count: 3, samples: 500, signals: [x, y], seed: 5}
          publish: {ticks: hello.raw}
        - name: calibrate
          uses: transform
          config:
            steps:
              - {op: affine, variable: x, scale: 2.0, offset: 1.0, units: mm}
              - {op: reduce, dim: sample, how: mean}
          subscribe: {datasets: hello.raw}
          publish: {datasets: hello.calibrated}
      complete:
        when: [{topic: hello.calibrated, count: 3}]
        timeout: 2m
"""


def test_two_services_pass_data_by_reference_while_another_process_subscribes(
    workdir: Path,
) -> None:
    """A ticker's datasets are transformed by a second actor; `wakefield subscribe`
    in another process sees each result, and each result's dataset holds the
    transform of its input."""
    wf = _workflow(HELLO)
    run = api.start(wf)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wakefield.cli",
            "subscribe",
            "--bus",
            run.bus_url,
            "hello.calibrated",
            "--from",
            "earliest",
            "--run",
            run.run_id,
            "--count",
            "3",
            "--timeout",
            "120",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result = run.wait()
    out, err = follower.communicate(timeout=120)

    assert result.state == "completed", result.reason
    seen = [Event.from_json(line) for line in out.splitlines()]
    assert follower.returncode == 0, err
    assert len(seen) == 3 and {e.id for e in seen} == {
        e["id"] for e in result.results["hello.calibrated"]
    }

    store = Datastore(run.datastore_root)
    raw = {e.id: e for e in _events(run.bus_url, "hello.raw", run.run_id)}
    for event in seen:
        assert event.dataref is not None
        out_ds = store.open_dataset(event.dataref, verify=True)
        in_ds = store.open_dataset(raw[event.causationid].dataref)
        assert out_ds.x.attrs["units"] == "mm"
        assert float(out_ds.x) == pytest.approx(float((in_ds.x * 2.0 + 1.0).mean()))


def test_a_second_run_in_the_same_folder_starts_afresh(workdir: Path) -> None:
    """Two runs of one workflow on one bus and datastore: each ticks from 0
    and completes with its own three results."""
    first = api.run(_workflow(HELLO))
    second = api.run(_workflow(HELLO))
    for result in (first, second):
        assert result.state == "completed", result.reason
        assert len(result.results["hello.calibrated"]) == 3
    assert first.run_id != second.run_id
    ticks = [e.data["tick"] for e in _events(second.bus, "hello.raw", second.run_id)]
    assert sorted(ticks) == [0, 1, 2]


FLAKY = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: {name}}}
    spec:
      topics:
        - {{name: {name}.in, partitions: 2, external: true}}
      services:
        - name: worker
          uses: wakefield.testing:Flaky
          config: {config}
          subscribe: {{in: {name}.in}}
          publish: {{out: {name}.out}}
          retry: {{attempts: 2, backoff: 100ms}}
          max_restarts: 3
      complete:
        when: [{{topic: {name}.out, count: {count}}}]
        timeout: 3m
        fail_on_deadletter: false
"""


def test_actor_killed_in_the_middle_of_an_event(workdir: Path) -> None:
    """SIGKILL of the actor while it handles an event: Ray restarts it, the event
    is delivered again, its effect happens once, and the restart is reported."""
    wf = _workflow(
        FLAKY.format(name="kill", count=1, config="{work: 3s, effects: effects}")
    )
    run = api.start(wf)
    actor = run.actors["worker"][0]
    _wait(lambda: ray.get(actor.ping.remote())["state"] == "running", what="actor up")
    api.publish(wf, "kill.in", "org.example.job", {"n": 1}, run_id=run.run_id)
    _wait(lambda: ray.get(actor.ping.remote())["busy_for"] > 0.5, what="handler busy")
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
    result = run.wait()

    assert result.state == "completed", result.reason
    outputs = _events(run.bus_url, "kill.out", run.run_id)
    assert len({e.id for e in outputs}) == 1
    effects = list((Path(run.datastore_root) / "effects").iterdir())
    assert len(effects) == 1
    restarted = [
        s
        for s in _events(run.bus_url, "kill.status", run.run_id)
        if s.type.endswith("service.restarted")
    ]
    assert restarted and restarted[0].data["reason"]


def _host_setup(wf: Any, workdir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    from wakefield.bus import TopicSpec
    from wakefield.workflow import topic_specs

    bus_url = bus_url_of(wf)
    open_bus(bus_url).ensure_topics(
        [TopicSpec(t.name, t.partitions) for t in topic_specs(wf).values()]
    )
    document = wf.model_dump(mode="json", by_alias=True)
    run_info = {
        "run_id": "r1",
        "bus_url": bus_url,
        "datastore_root": str(workdir / "data"),
    }
    return document, run_info, bus_url


@pytest.mark.parametrize("crash", ["before-commit", "before-publish"])
def test_crash_after_the_effect_does_not_repeat_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    """A host that handled an event but crashed before publishing its outputs or before
    committing: the next host does not run the handler again, and publishes the
    recorded outputs if they were not published."""
    from wakefield.runtime.host import ServiceHost

    wf = _workflow(FLAKY.format(name="dup", count=1, config="{effects: effects}"))
    document, run_info, bus_url = _host_setup(wf, workdir)
    api.publish(wf, "dup.in", "org.example.job", {"n": 1}, run_id="r1")

    with monkeypatch.context() as patch:
        if crash == "before-commit":
            patch.setattr(ServiceHost, "_commit", lambda self, consumer, record: None)
        else:

            def crash_now(self: Any, cause: str, entry: Any) -> None:
                raise RuntimeError("crash between the ledger and the publish")

            patch.setattr(ServiceHost, "_finish_emitting", crash_now)
        first = ServiceHost(document, "worker", 0, run_info)
        _wait(
            lambda: len(list((workdir / "data" / "effects").glob("*"))) == 1,
            what="the effect",
        )
        first.stop(5)

    second = ServiceHost(document, "worker", 0, run_info)
    _wait(lambda: second.ping()["skipped"] == 1, what="redelivery recognised")
    second.stop(5)
    assert len(list((workdir / "data" / "effects").iterdir())) == 1
    outputs = _events(bus_url, "dup.out")
    assert len(outputs) == 1 and outputs[0].data == {"n": 1}


def test_bad_events_are_dead_lettered_and_the_service_keeps_going(
    workdir: Path,
) -> None:
    """A poison event (after its retries) and undecodable bytes go to the dead-letter
    topic with their errors; the events after them are still handled."""
    wf = _workflow(FLAKY.format(name="dlq", count=2, config="{fail_when: poison}"))
    run = api.start(wf)
    bus = open_bus(run.bus_url)
    producer = bus.producer()
    for data in ({"n": 1}, {"n": 2, "poison": True}):
        producer.publish(
            "dlq.in",
            Event(source="test", type="job", data=data, runid=run.run_id),
            key="k",
        )
    bus.publish_raw("dlq.in", b"\x00 not an event", key="k")  # type: ignore[attr-defined]
    producer.publish(
        "dlq.in",
        Event(source="test", type="job", data={"n": 3}, runid=run.run_id),
        key="k",
    )
    result = run.wait()

    assert result.state == "completed", result.reason
    assert sorted(e["data"]["n"] for e in result.results["dlq.out"]) == [1, 3]
    letters = _events(run.bus_url, "dlq.deadletter")
    errors = sorted(letter.data["error"]["type"] for letter in letters)
    assert errors == ["EventError", "ServiceError"]
    poison = next(x for x in letters if x.data["error"]["type"] == "ServiceError")
    assert (
        poison.data["attempts"] == 2 and poison.data["event"]["data"]["poison"] is True
    )
    assert "asked to fail" in poison.data["error"]["message"]


def test_a_failing_attempt_is_retried(workdir: Path) -> None:
    """An event whose first attempt fails succeeds on the second, with nothing dead-lettered."""
    wf = _workflow(FLAKY.format(name="retry", count=1, config="{fail_attempts: 1}"))
    run = api.start(wf)
    api.publish(wf, "retry.in", "job", {"n": 1}, run_id=run.run_id)
    result = run.wait()
    assert result.state == "completed"
    assert _events(run.bus_url, "retry.deadletter") == []


STREAM = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: stream}
    spec:
      topics: [{name: stream.ticks, partitions: 4}]
      services:
        - name: source
          uses: ticker
          config: {interval: 0.4, count: 12}
          publish: {ticks: stream.ticks}
        - name: worker
          uses: relay
          config: {work: 0.1}
          subscribe: {in: stream.ticks}
          publish: {out: stream.out}
      complete:
        when: [{topic: stream.out, count: 12}]
        timeout: 3m
"""


def test_cancel_then_resume_finishes_without_loss_or_duplicates(workdir: Path) -> None:
    """`cancel` from the control topic stops the run; `--resume` continues from the
    committed offsets and the source's saved position, and every tick arrives once."""
    wf = _workflow(STREAM)
    run = api.start(wf)
    _wait(
        lambda: len(_events(run.bus_url, "stream.out", run.run_id)) >= 3,
        what="first results",
    )
    api.cancel(wf, run.run_id, reason="test cancel")
    first = run.wait()
    assert first.state == "cancelled" and first.reason == "test cancel"
    done_before = len({e.id for e in _events(run.bus_url, "stream.out", run.run_id)})
    assert 3 <= done_before < 12

    again = Run(wf, run_id=run.run_id, resume=True)
    again.start()
    second = again.wait()
    assert second.state == "completed", second.reason
    ticks = [e.data["tick"] for e in _events(run.bus_url, "stream.out", run.run_id)]
    assert sorted(set(ticks)) == list(range(12))


def test_scale_adds_replicas_that_share_the_work(workdir: Path) -> None:
    """`scale` from the control topic starts a second replica, which takes partitions
    and handles events."""
    wf = _workflow(
        STREAM.replace("count: 12}", "count: 30}")
        .replace("count: 12}]", "count: 30}]")
        .replace("work: 0.1", "work: 0.3")
    )
    run = api.start(wf)
    _wait(
        lambda: len(_events(run.bus_url, "stream.out", run.run_id)) >= 2,
        what="first results",
    )
    api.scale(wf, run.run_id, "worker", 2)
    _wait(
        lambda: len(run.actors.get("worker", [])) == 2 or run._drain() or False,
        timeout=60,
        what="second replica",
    )
    result = run.wait()
    assert result.state == "completed", result.reason
    sources = {e.source for e in _events(run.bus_url, "stream.out", run.run_id)}
    assert sources == {"wakefield://stream/worker"}
    ups = {
        (s.data["service"], s.data["replica"])
        for s in _events(run.bus_url, "stream.status", run.run_id)
        if s.type.endswith("service.up")
    }
    assert ("worker", 1) in ups
    handled_by_second = [
        s
        for s in _events(run.bus_url, "stream.status", run.run_id)
        if s.type.endswith("service.scaled")
    ]
    assert handled_by_second[0].data["replicas"] == 2


def test_status_command_reports_a_finished_run(workdir: Path) -> None:
    """`wakefield status` folds the status topic into the run's state and services."""
    wf = _workflow(HELLO)
    result = api.run(wf)
    path = workdir / "wf.yaml"
    path.write_text(textwrap.dedent(HELLO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wakefield.cli",
            "status",
            result.run_id,
            "-f",
            str(path),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == "completed"
    assert status["services"]["source"]["progress"] == pytest.approx(1.0)
    assert np.isclose(status["services"]["calibrate"]["replicas"], 1)
