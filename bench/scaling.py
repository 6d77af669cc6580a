"""Scaling out: a CPU-bound service with one and with two replicas on a Ray
cluster of two nodes started on this machine.

Each event costs the handler 50 ms of CPU time (pure Python arithmetic,
measured with the thread's CPU clock, so a busy machine stretches the wall
time but not the work).  A burst of events is published at once and the
time until every result has arrived is measured; throughput is events per
second, and the ratio is two replicas over one.  The two replicas are placed
on different nodes (Ray's SPREAD strategy; checked).  Both nodes share this
machine's cores, so the ratio cannot exceed the number of cores that are free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import Field

from bench.report import save, table
from wakefield.config import Duration, StrictModel
from wakefield.events import Event
from wakefield.service import HandlerContext, Service

EVENTS = 60
CPU_SECONDS = 0.05
REPO = Path(__file__).resolve().parents[1]

WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: bench-scaling}}
    spec:
      datastore: {{root: {root}/data}}
      bus: {{backend: embedded, path: {root}/bus}}
      topics: [{{name: scaling.in, partitions: 4, external: true}}]
      services:
        - name: burn
          uses: bench.scaling:Burn
          replicas: {replicas}
          config: {{cpu: {cpu}}}
          subscribe: {{in: scaling.in}}
          publish: {{out: scaling.out}}
"""


class BurnConfig(StrictModel):
    cpu: Duration = Field(default=CPU_SECONDS, gt=0)
    """CPU time each event costs, in seconds."""


class Burn(Service):
    """Spends `cpu` seconds of CPU on each event, then passes it on."""

    kind = "bench.scaling:Burn"
    Config = BurnConfig
    summary = "Spend a fixed CPU time on each event (for benchmarks)."
    inputs = {"in": "any event"}
    outputs = {"out": "the same data"}

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        config: BurnConfig = self.config  # type: ignore[assignment]
        burn(config.cpu)
        ctx.emit("out", "bench.burned", event.data)


def burn(cpu_seconds: float) -> int:
    """Pure Python arithmetic until this thread has used ``cpu_seconds`` of CPU."""
    end = time.thread_time() + cpu_seconds
    x = 0
    while time.thread_time() < end:
        for i in range(2000):
            x = (x * 31 + i) % 1_000_003
    return x


def throughput(cluster: Any, replicas: int) -> dict[str, Any]:
    """Events per second of ``replicas`` Burn replicas on ``cluster``."""
    from wakefield import api
    from wakefield.bus import open_bus
    from wakefield.loader import loads_workflow
    from wakefield.runtime.cluster import replicas as placed

    root = tempfile.mkdtemp(prefix="wf-bench-scaling-")
    text = WORKFLOW.format(root=root, replicas=replicas, cpu=CPU_SECONDS)
    wf = loads_workflow(textwrap.dedent(text), filename="bench-scaling.yaml")
    run = api.start(wf)
    bus = open_bus(run.bus_url)
    producer = bus.producer()
    results = bus.consumer(["scaling.out"], group=None, start="latest")
    try:
        # Warm-up: every replica up, in the group, and through one event each.
        _wait_up(bus, run.run_id, replicas, timeout=300)
        _burst(producer, results, run.run_id, 4 * replicas, timeout=180)
        nodes = {
            a["node_id"]
            for a in placed(cluster.dashboard, run.run_id, token=cluster.token)
            if a["state"] == "ALIVE"
        }
        started = time.perf_counter()
        _burst(producer, results, run.run_id, EVENTS, timeout=600)
        seconds = time.perf_counter() - started
    finally:
        results.close()
        run.cancel("benchmark done")
        run.wait()
        bus.close()
    return {
        "replicas": replicas,
        "nodes used": len(nodes),
        "events": EVENTS,
        "seconds": seconds,
        "events/s": EVENTS / seconds,
    }


def _wait_up(bus: Any, run_id: str, replicas: int, timeout: float) -> None:
    """Wait for the ``service.up`` status event of every replica."""
    status = bus.consumer(["bench-scaling.status"], group=None, start="earliest")
    up: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(up) < replicas and time.monotonic() < deadline:
            for record in status.poll(timeout=0.5, max_records=100):
                event = record.event
                if event and event.runid == run_id and event.type.endswith(".up"):
                    up.add(int(event.data["replica"]))
    finally:
        status.close()
    if len(up) < replicas:
        raise TimeoutError(f"{len(up)} of {replicas} replicas up after {timeout} s")


def _burst(producer: Any, results: Any, run_id: str, n: int, timeout: float) -> None:
    sent = set()
    for i in range(n):
        event = Event(source="bench", type="bench.burn", data={"i": i}, runid=run_id)
        producer.publish("scaling.in", event, key=f"k{i}")
        sent.add(event.id)
    deadline = time.monotonic() + timeout
    while sent and time.monotonic() < deadline:
        for record in results.poll(timeout=0.5, max_records=100):
            if record.event is not None:
                sent.discard(str(record.event.causationid))
    if sent:
        raise TimeoutError(
            f"{len(sent)} of {n} events without a result after {timeout} s"
        )


def direct_rate() -> float:
    """Events per second of the handler's work alone, in this process."""
    started = time.perf_counter()
    for _ in range(20):
        burn(CPU_SECONDS)
    return 20 / (time.perf_counter() - started)


def measure(gcs_address: str, dashboard: str, token: str) -> dict[str, Any]:
    """Both measurements, as the driver of the cluster at ``gcs_address``."""
    import ray

    ray.init(address=gcs_address, namespace="wakefield", logging_level="WARNING")
    cluster = SimpleNamespace(dashboard=dashboard, token=token)
    try:
        return {"rows": [throughput(cluster, 1), throughput(cluster, 2)]}
    finally:
        ray.shutdown()


def run() -> str:
    from wakefield.runtime.cluster import LocalRayCluster

    # The driver runs in a process of its own: Ray keeps one token and one
    # cluster per process, and this one may have run a local Ray already.
    with LocalRayCluster(cpus=2, env={"PYTHONPATH": str(REPO)}) as cluster:
        cluster.start(workers=1)
        env = {**os.environ, **cluster.client_env(), "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-m", "bench.scaling", "--measure",
             cluster.gcs_address, cluster.dashboard],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the measuring driver failed:\n{done.stderr[-4000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]

    ratio = rows[1]["events/s"] / rows[0]["events/s"]
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    direct = direct_rate()
    figures = {"rows": rows, "ratio": ratio, "cores": cores, "load": load}
    save("scaling", {**figures, "direct_events_per_s": direct})
    return (
        table(
            f"{CPU_SECONDS * 1e3:.0f} ms of CPU per event, a burst of {EVENTS} "
            "events, two Ray nodes on this machine",
            rows,
        )
        + f"  ratio 2 replicas / 1 replica: {ratio:.2f}x\n"
        + f"  this machine has {cores} cores, shared by both Ray nodes, the bus "
        f"and the driver (load average {load:.1f} at the end); the ratio can "
        f"reach {min(2, cores)}x only if they are otherwise idle\n"
        + f"  the handler alone, in one process: {direct:.1f} events/s "
        f"(ideal {1 / CPU_SECONDS:.0f})\n"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        found = measure(sys.argv[2], sys.argv[3], os.environ["RAY_AUTH_TOKEN"])
        print(json.dumps(found))
    else:
        print(run())
