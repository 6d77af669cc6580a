"""Runs on a Ray cluster of two nodes started on this machine: `wakefield submit`
through Ray's job server with its token, replicas spread over the nodes, and no
event lost when the worker node is lost mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wakefield.bus import open_bus
from wakefield.events import Event
from wakefield.runtime.cluster import (
    LocalRayCluster,
    dashboard_url,
    entrypoint,
    job_logs,
    nodes,
    ray_token,
    replicas,
    wait_for_job,
)

pytestmark = pytest.mark.timeout(300)

SPREAD = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: spread}
    spec:
      topics: [{name: spread.in, partitions: 4, external: true}]
      services:
        - name: worker
          uses: wakefield.testing:Flaky
          replicas: 2
          max_restarts: -1
          config: {work: 0.3s, effects: effects}
          subscribe: {in: spread.in}
          publish: {out: spread.out}
      complete:
        when: [{topic: spread.out, count: 40}]
        timeout: 4m
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """A head and one worker node, two CPUs each, token authentication on."""
    home = tmp_path_factory.mktemp("cluster")
    with LocalRayCluster(cpus=2, cwd=home) as started:
        started.start(workers=1)
        yield started


def _cli(
    *args: str, cluster: LocalRayCluster, cwd: Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.client_env()}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "wakefield.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def _events(bus_url: str, topic: str, run_id: str) -> list[Event]:
    bus = open_bus(bus_url)
    consumer = bus.consumer([topic], group=None, start="earliest")
    out: list[Event] = []
    while records := consumer.poll(timeout=0.3, max_records=1000):
        out += [r.event for r in records if r.event and r.event.runid == run_id]
    consumer.close()
    return out


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_a_lost_node_loses_no_event(cluster: LocalRayCluster, tmp_path: Path) -> None:
    """A submitted run's two replicas run on different nodes; after the worker node
    is killed mid-stream, Ray restarts its replica on the head and every event's
    effect and output appear, once each after dedup by id."""
    path = tmp_path / "spread.yaml"
    path.write_text(textwrap.dedent(SPREAD))
    sent = _cli(
        "submit", str(path), "--ray-address", cluster.dashboard, "-o", "json",
        cluster=cluster, cwd=tmp_path,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    run = json.loads(sent.stdout)
    run_id, bus_url = run["run_id"], run["bus"]
    assert run["submission_id"] == run_id

    def placed() -> dict[int, str] | None:
        alive = [
            a
            for a in replicas(cluster.dashboard, run_id, token=cluster.token)
            if a["service"] == "worker" and a["state"] == "ALIVE"
        ]
        return {a["replica"]: a["node_id"] for a in alive} if len(alive) == 2 else None

    where = _wait(placed, 120, "two replicas alive")
    head = next(
        n["node_id"] for n in nodes(cluster.dashboard, token=cluster.token) if n["head"]
    )
    assert len(set(where.values())) == 2, f"both replicas on one node: {where}"
    lost = next(replica for replica, node in where.items() if node != head)

    producer = open_bus(bus_url).producer()
    inputs = []
    for i in range(40):
        event = Event(source="test", type="job", data={"n": i}, runid=run_id)
        inputs.append(event.id)
        producer.publish("spread.in", event, key=f"key-{i}")
        if i == 19:
            _wait(
                lambda: len(_events(bus_url, "spread.out", run_id)) >= 6,
                60,
                "first outputs",
            )
            cluster.kill("1")  # the worker node, every process of it, mid-stream

    state = wait_for_job(cluster.dashboard, run_id, timeout=180, token=cluster.token)
    logs = job_logs(cluster.dashboard, run_id, token=cluster.token)
    assert state == "SUCCEEDED", logs[-3000:]

    outputs = {e.id: e.causationid for e in _events(bus_url, "spread.out", run_id)}
    assert sorted(outputs.values()) == sorted(inputs)
    effects = {
        p.name.rsplit(".", 1)[0]
        for p in (tmp_path / ".wakefield/data/effects").iterdir()
    }
    assert effects == set(inputs)
    restarted = [
        e.data
        for e in _events(bus_url, "spread.status", run_id)
        if e.type.endswith("service.restarted")
    ]
    assert [r["replica"] for r in restarted if r["service"] == "worker"] == [lost]
    status = _cli(
        "status", run_id, "-f", str(path), "--ray-address", cluster.dashboard,
        "-o", "json", cluster=cluster, cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["state"] == "completed" and seen["ray"]["job"]["status"] == "SUCCEEDED"
    last = {a["replica"]: a["node_id"] for a in seen["ray"]["replicas"]}
    assert last == {0: head, 1: head}, "the lost replica did not move to the head"


@pytest.mark.slow
def test_a_wrong_token_is_refused_with_a_hint(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """`wakefield submit` with a token the cluster does not know exits 1 and says
    where the token comes from."""
    path = tmp_path / "spread.yaml"
    path.write_text(textwrap.dedent(SPREAD))
    sent = _cli(
        "submit", str(path), "--ray-address", cluster.dashboard,
        cluster=cluster, cwd=tmp_path, token="not-the-token",
    )  # fmt: skip
    assert sent.returncode == 1
    assert "RAY_AUTH_TOKEN" in sent.stderr and "refused" in sent.stderr
    assert sent.stdout == ""


def test_token_is_looked_up_where_ray_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAY_AUTH_TOKEN first, then the file RAY_AUTH_TOKEN_PATH names, then
    ~/.ray/auth_token."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert ray_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("from-home\n")
    assert ray_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert ray_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert ray_token() == "from-env"


def test_dashboard_addresses_are_completed() -> None:
    """A bare host gets http:// and Ray's dashboard port; a Ray Client address is
    refused with what to give instead."""
    assert dashboard_url("head") == "http://head:8265"
    assert dashboard_url("head:9000/") == "http://head:9000"
    assert dashboard_url("https://ray.lab.org:443") == "https://ray.lab.org:443"
    with pytest.raises(Exception, match="dashboard"):
        dashboard_url("ray://head:10001")


def test_the_job_entrypoint_runs_wakefield_on_the_inline_workflow(
    tmp_path: Path,
) -> None:
    """The job's shell command writes the workflow text from the environment to a
    file named as the original, calls `wakefield run` on it with the options,
    passes its exit code on and removes the file."""
    fake = tmp_path / "fake-wakefield"
    fake.write_text('#!/bin/sh\ncat "$2"; echo "args: $*"; cp "$2" "$OUT"; exit 3\n')
    fake.chmod(0o755)
    command = entrypoint(str(fake), "my flow.yaml", ["--bus", "kafka://h:9092"])
    env = {
        **os.environ,
        "WAKEFIELD_WORKFLOW_YAML": "metadata: {name: x}",
        "TMPDIR": str(tmp_path),
        "OUT": str(tmp_path / "seen.yaml"),
    }
    done = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, env=env
    )
    assert done.returncode == 3
    assert "metadata: {name: x}" in done.stdout
    assert "/my flow.yaml --bus kafka://h:9092" in done.stdout
    assert (tmp_path / "seen.yaml").read_text() == "metadata: {name: x}\n"
    assert not list(tmp_path.glob("wakefield-*"))
