"""The linac scan through the simulation service, against running Cheetah
without the platform.

- service: a scan of ``SAMPLES`` settings through the ``simulation`` service
  (Ray tasks, Zarr region writes, the embedded bus), one worker and two;
- direct: the same settings through the ``linac`` simulator in this process,
  batched, no platform (the platform's overhead is service / direct);
- plain loop: a plain Cheetah loop, one sample at a time, over the first
  ``LOOP_SAMPLES`` of them (what a script without wakefield would do).
"""

from __future__ import annotations

import tempfile
import textwrap
import time

from bench.linac_baseline import batched_simulator, plain_cheetah_loop, random_rows
from bench.report import save, table

SAMPLES = 256
LOOP_SAMPLES = 16
PARTICLES = 10_000
CHUNK = 64

WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: bench-scan}}
    spec:
      datastore: {{root: {root}/data}}
      bus: {{backend: embedded, path: {root}/bus}}
      services:
        - name: scan
          uses: simulation
          config:
            simulator: linac
            options: {{n_particles: {particles}}}
            design: {{method: random, samples: {samples}, seed: 0}}
            chunk: {chunk}
            workers: {workers}
            plots: false
          subscribe: {{requests: scan.requests}}
          publish: {{datasets: scan.datasets}}
          resources: {{cpu: 0}}
      start: [{{topic: scan.requests}}]
      complete: {{when: [{{topic: scan.datasets}}], timeout: 1h}}
"""


def service_scan(workers: int) -> float:
    """Seconds of the scan inside the service (from its dataset-ready event)."""
    from wakefield import api
    from wakefield.loader import loads_workflow

    root = tempfile.mkdtemp(prefix="wf-bench-scan-")
    text = WORKFLOW.format(
        root=root, particles=PARTICLES, samples=SAMPLES, chunk=CHUNK, workers=workers
    )
    result = api.run(loads_workflow(textwrap.dedent(text)))
    if not result.ok:
        raise RuntimeError(f"benchmark scan failed: {result.reason}")
    return float(result.results["scan.datasets"][0]["data"]["seconds"])


def run() -> str:
    rows = random_rows(SAMPLES)
    started = time.perf_counter()
    direct = batched_simulator(rows, n_particles=PARTICLES)
    loop = plain_cheetah_loop(rows[:LOOP_SAMPLES], n_particles=PARTICLES)
    one = service_scan(1)
    two = service_scan(2)
    rates = {
        "service, 1 worker": SAMPLES / one,
        "service, 2 workers": SAMPLES / two,
        "direct batched simulator (no platform)": SAMPLES / direct,
        "plain Cheetah loop (one sample at a time)": LOOP_SAMPLES / loop,
    }
    figures = {
        "rates": rates,
        "service_over_loop": rates["service, 1 worker"]
        / rates["plain Cheetah loop (one sample at a time)"],
        "service_over_direct": rates["service, 1 worker"]
        / rates["direct batched simulator (no platform)"],
        "two_over_one_worker": one / two,
        "seconds": time.perf_counter() - started,
    }
    save("simulation", figures)
    rows_out = [{"path": k, "samples/s": v} for k, v in rates.items()]
    return (
        table(
            f"linac scan, {SAMPLES} samples x {PARTICLES} particles, chunks of {CHUNK}",
            rows_out,
        )
        + f"  service (1 worker) / plain Cheetah loop: {figures['service_over_loop']:.2f}x\n"
        + f"  service (1 worker) / direct batched call: {figures['service_over_direct']:.2f}x "
        "(the platform's overhead)\n"
        + f"  two workers / one worker: {figures['two_over_one_worker']:.2f}x "
        "(2 cores on this machine)\n"
    )


if __name__ == "__main__":
    print(run())
