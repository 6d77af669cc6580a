"""Replicas that follow consumer lag: the spec's checks, the scaler's rule, and
a slow relay on the embedded bus scaling up under a burst and back down."""

from __future__ import annotations

import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import wakefield.api as api
from wakefield.bus import open_bus
from wakefield.errors import WorkflowError
from wakefield.events import Event
from wakefield.loader import loads_workflow
from wakefield.runtime.autoscale import Autoscaler, desired_replicas
from wakefield.workflow import Autoscale

SLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: lag}}
    spec:
      topics: [{{name: lag.in, partitions: 4, external: true}}]
      services:
        - name: worker
          uses: relay
          config: {{work: {work}}}
          subscribe: {{in: lag.in}}
          publish: {{out: lag.out}}
          {extra}
"""


def _workflow(extra: str, work: float = 0.4) -> Any:
    extra = extra.replace("\n", "\n" + " " * 10)  # more fields of the service
    text = textwrap.dedent(SLOW.format(work=work, extra=extra))
    return loads_workflow(text, filename="lag.yaml")


def test_replicas_start_at_min_when_not_given() -> None:
    """A service with autoscale and no replicas starts with `min` replicas."""
    wf = _workflow("autoscale: {min: 2, max: 3, target_lag: 5, interval: 1s}")
    svc = wf.spec.services[0]
    assert svc.replicas == 2 and svc.autoscale.interval == 1.0


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("autoscale: {min: 3, max: 2}", "min (3) is above max (2)"),
        ("replicas: 5\nautoscale: {max: 4}", "outside autoscale's range 1..4"),
        ("autoscale: {max: 4, target_lag: 0}", "greater than or equal to 1"),
        ("autoscale: {max: 4, speed: 2}", "unknown field 'speed'"),
    ],
)
def test_bad_autoscale_is_refused_with_its_location(extra: str, says: str) -> None:
    """min above max, replicas outside the range, a zero target and unknown keys
    are errors naming the file and the field."""
    with pytest.raises(WorkflowError) as caught:
        _workflow(extra)
    assert says in str(caught.value) and "lag.yaml:" in str(caught.value)


def test_desired_replicas_is_lag_over_target_within_bounds() -> None:
    """ceil(lag / target_lag), never below min nor above max."""
    policy = Autoscale(min=1, max=4, target_lag=100)
    assert [desired_replicas(lag, policy) for lag in (0, 1, 100, 101, 350, 10**6)] == [
        1,
        1,
        1,
        2,
        4,
        4,
    ]


def test_scaler_waits_for_the_interval_and_the_cooldown(workdir: Path) -> None:
    """The lag is read at most once per interval, and no change follows another
    within the cool-down, on a real embedded bus with events waiting."""
    wf = _workflow(
        "autoscale: {min: 1, max: 4, target_lag: 2, interval: 5s, cooldown: 30s}"
    )
    bus = open_bus(f"embedded://{workdir / 'bus'}")
    from wakefield.bus import TopicSpec

    bus.ensure_topics([TopicSpec("lag.in", 4)])
    producer = bus.producer()
    for i in range(5):
        producer.publish("lag.in", Event(source="t", type="x", data=i), key=str(i))
    scaler = Autoscaler(wf, bus)

    first = scaler.decide({"worker": 1}, now=100.0)
    assert [(d.service, d.replicas, d.lag) for d in first] == [("worker", 3, 5)]
    assert scaler.decide({"worker": 1}, now=102.0) == []  # within the interval
    scaler.changed("worker", now=100.0)
    assert scaler.decide({"worker": 3}, now=106.0) == []  # nothing to change
    assert scaler.decide({"worker": 1}, now=112.0) == []  # within the cool-down
    assert [d.replicas for d in scaler.decide({"worker": 1}, now=131.0)] == [3]


def _status(bus_url: str, run_id: str) -> list[Event]:
    bus = open_bus(bus_url)
    consumer = bus.consumer(["lag.status"], group=None, start="earliest")
    out: list[Event] = []
    while records := consumer.poll(timeout=0.2, max_records=1000):
        out += [r.event for r in records if r.event and r.event.runid == run_id]
    consumer.close()
    return out


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(240)
def test_a_burst_scales_a_slow_relay_up_and_the_quiet_after_it_down(
    workdir: Path,
) -> None:
    """A burst of 40 events for a 0.4 s relay raises its replicas above one
    (reported as service.scaled with the lag), every event is relayed once,
    and once the lag is gone the replicas go back to min."""
    wf = _workflow(
        "autoscale: {min: 1, max: 3, target_lag: 4, interval: 1s, cooldown: 3s}"
    )
    run = api.start(wf)
    producer = open_bus(run.bus_url).producer()
    sent = set()
    for i in range(40):
        event = Event(source="test", type="job", data={"n": i}, runid=run.run_id)
        producer.publish("lag.in", event, key=f"k{i}")
        sent.add(event.id)

    def scaled() -> list[dict[str, Any]]:
        return [
            e.data
            for e in _status(run.bus_url, run.run_id)
            if e.type.endswith("service.scaled")
        ]

    waiting = ThreadPoolExecutor(1).submit(run.wait)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not waiting.done():
        changes = scaled()
        if any(c["replicas"] > 1 for c in changes) and changes[-1]["replicas"] == 1:
            break
        time.sleep(0.5)
    api.cancel(wf, run.run_id, reason="test done")
    result = waiting.result(timeout=60)

    changes = scaled()
    assert any(c["replicas"] > 1 and c["by"] == "autoscale" for c in changes), changes
    assert changes[-1]["replicas"] == 1 and changes[-1]["lag"] <= 4, changes
    relayed = {
        e.id: e.causationid
        for e in api.subscribe(
            wf, "lag.out", start="earliest", run_id=run.run_id, timeout=2.0
        )
    }
    assert sorted(relayed.values()) == sorted(sent)
    assert result.state == "cancelled", result.reason
