"""The surrogate of the linac: how fast it answers, how long it trains, how
well it predicts.

- inference: seconds per sample of :meth:`SurrogateModel.predict` on a
  batch of ``BATCH`` settings (scalars with their ensemble standard
  deviation; and with the 64 x 64 phase space image too), against the
  ``linac`` simulator on Cheetah at ``PARTICLES`` particles per sample,
  batched (Cheetah's fastest path here, so the ratio is a lower bound);
- training: wall-clock seconds of :func:`train` on the scan;
- errors: mean absolute error as % of each output's range and R^2 per
  output on the held-out test samples (goal: every scalar at most 1 %).

The scan (``SAMPLES`` Sobol samples) is made once through the simulation
service and kept under ``.wakefield/bench/surrogate-data``::

    python -m bench surrogate
    python -m bench.surrogate --data ROOT --uri URI   # an existing scan
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bench.linac_baseline import batched_simulator, random_rows
from bench.report import RESULTS, save, table
from wakefield.datastore import Datastore
from wakefield.services.surrogate import Metrics, SurrogateModel, train

SAMPLES = 4096
PARTICLES = 10_000
SEED = 1
BATCH = 1000
CHEETAH_SAMPLES = 64
GOAL_PERCENT = 1.0
GOAL_RATIO = 1e4

TUNED: dict[str, Any] = {
    "transforms": {
        "bc1_peak_current": "log",
        "bc2_peak_current": "log",
        "peak_current": "log",
        "bc1_chirp": "asinh",
        "bc2_chirp": "asinh",
        "chirp": "asinh",
    },
    "network": {
        "hidden": [128, 128, 128, 128],
        "activation": "tanh",
        "image_head": "pca",
        "image_components": 128,
    },
    "optimizer": {"name": "adam", "lr": 0.002},
    "schedule": {"name": "cosine"},
    "training": {"epochs": 800, "batch_size": 64, "patience": None, "seed": 0},
    "uncertainty": {"method": "ensemble", "members": 3},
}
"""The configuration of workflows/linac-surrogate.yaml (its image, ``lps``,
is added by :func:`measure`)."""

SCAN = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: bench-surrogate-scan}}
    spec:
      datastore: {{root: {root}}}
      bus: {{backend: embedded, path: {bus}}}
      services:
        - name: scan
          uses: simulation
          config:
            simulator: linac
            options: {{n_particles: {particles}}}
            design: {{method: sobol, samples: {samples}, seed: {seed}}}
            chunk: 256
            plots: false
          subscribe: {{requests: scan.requests}}
          publish: {{datasets: scan.datasets}}
      start: [{{topic: scan.requests}}]
      complete: {{when: [{{topic: scan.datasets}}], timeout: 3h}}
"""


def linac_scan(
    samples: int = SAMPLES,
    *,
    seed: int = SEED,
    particles: int = PARTICLES,
    root: Path | None = None,
) -> xr.Dataset:
    """A linac scan through the simulation service, made once and kept."""
    from wakefield import api
    from wakefield.loader import loads_workflow

    root = root or RESULTS / "surrogate-data"
    store = Datastore(root)
    marker = Path(store.root) / f"linac-{samples}-{seed}-{particles}.uri"
    if marker.exists():
        return store.open_dataset(marker.read_text().strip()).load()
    bus = tempfile.mkdtemp(prefix="wf-bench-bus-")
    text = SCAN.format(
        root=store.root, bus=bus, particles=particles, samples=samples, seed=seed
    )
    result = api.run(loads_workflow(textwrap.dedent(text)))
    if not result.ok:
        raise RuntimeError(f"the linac scan failed: {result.reason}")
    uri = result.results["scan.datasets"][0]["dataref"]["uri"]
    marker.write_text(uri)
    return store.open_dataset(uri).load()


def inference_seconds(
    model: SurrogateModel,
    batch: int = BATCH,
    *,
    images: bool = False,
    repeats: int = 20,
) -> float:
    """Median seconds per sample of ``predict`` on a batch of random settings."""
    rng = np.random.default_rng(0)
    x = {s.name: rng.uniform(s.low, s.high, batch) for s in model.settings}
    model.predict(x, images=images)  # the first call allocates
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(x, images=images)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / batch


def cheetah_seconds(
    samples: int = CHEETAH_SAMPLES, particles: int = PARTICLES
) -> float:
    """Seconds per sample of the linac simulator, batched, on random settings."""
    return (
        batched_simulator(random_rows(samples, seed=7), n_particles=particles) / samples
    )


def error_table(metrics: Metrics) -> str:
    """MAE (% of range) and R^2 per output, worst first."""
    rows = [
        {
            "output": name,
            "unit": e.unit,
            "MAE % of range": e.mae_percent,
            "R^2": e.r2,
            "MAE": e.mae,
            "range": e.range,
        }
        for name, e in sorted(
            metrics.outputs.items(), key=lambda kv: -kv[1].mae_percent
        )
    ]
    if metrics.image is not None:
        e = metrics.image
        rows.append(
            {
                "output": "lps (pixels)",
                "unit": e.unit,
                "MAE % of range": e.mae_percent,
                "R^2": e.r2,
                "MAE": e.mae,
                "range": e.range,
            }
        )
    return table(
        f"test errors ({metrics.samples.get('test', 0)} held-out samples)", rows
    )


def measure(
    ds: xr.Dataset, config: dict[str, Any] | None = None, *, image: str | None = None
) -> dict[str, Any]:
    """Train, time inference and the simulator; every figure of the suite."""
    config = copy.deepcopy(config or TUNED)
    if image is not None:
        config["image"] = image
    started = time.perf_counter()
    model, metrics = train(ds, config)
    training = time.perf_counter() - started
    scalars = inference_seconds(model)
    with_image = inference_seconds(model, images=True, repeats=5) if image else None
    simulator = cheetah_seconds()
    worst = max(e.mae_percent for e in metrics.outputs.values())
    return {
        "samples": int(ds.sizes["sample"]),
        "train_samples": metrics.samples["train"],
        "training_s": training,
        "epochs": [len(c.train) for c in metrics.curves],
        "members": len(metrics.curves),
        "surrogate_s_per_sample": scalars,
        "surrogate_with_image_s_per_sample": with_image,
        "cheetah_s_per_sample": simulator,
        "speedup": simulator / scalars,
        "speedup_with_image": simulator / with_image if with_image else None,
        "worst_mae_percent": worst,
        "outputs_over_goal": [
            n for n, e in metrics.outputs.items() if e.mae_percent > GOAL_PERCENT
        ],
        "metrics": metrics,
    }


def report(figures: dict[str, Any]) -> str:
    metrics: Metrics = figures["metrics"]
    lines = [
        table(
            "linac surrogate",
            [
                {
                    "figure": "scan samples (train)",
                    "value": f"{figures['samples']} ({figures['train_samples']})",
                },
                {"figure": "training, s", "value": figures["training_s"]},
                {
                    "figure": "ensemble members x epochs",
                    "value": f"{figures['members']} x {max(figures['epochs'])}",
                },
                {
                    "figure": f"surrogate, s/sample (batch {BATCH})",
                    "value": figures["surrogate_s_per_sample"],
                },
                {
                    "figure": "surrogate with image, s/sample",
                    "value": figures["surrogate_with_image_s_per_sample"]
                    or float("nan"),
                },
                {
                    "figure": f"Cheetah linac, s/sample ({PARTICLES} particles, batched)",
                    "value": figures["cheetah_s_per_sample"],
                },
                {"figure": "speed-up, scalars (goal 1e4)", "value": figures["speedup"]},
                {
                    "figure": "speed-up with image",
                    "value": figures["speedup_with_image"] or float("nan"),
                },
                {
                    "figure": f"worst MAE, % of range (goal {GOAL_PERCENT})",
                    "value": figures["worst_mae_percent"],
                },
            ],
        ),
        error_table(metrics),
    ]
    over = figures["outputs_over_goal"]
    lines.append(
        f"  outputs over {GOAL_PERCENT} %: {', '.join(over) if over else 'none'}\n"
    )
    return "\n".join(lines)


def run() -> str:
    ds = linac_scan()
    figures = measure(ds, image="lps")
    save(
        "surrogate",
        {k: (v.summary() if isinstance(v, Metrics) else v) for k, v in figures.items()},
    )
    return report(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="datastore root of an existing linac scan")
    parser.add_argument("--uri", help="the scan's URI in that datastore")
    parser.add_argument("--no-image", action="store_true", help="scalars only")
    args = parser.parse_args()
    if args.data and args.uri:
        ds = Datastore(args.data).open_dataset(args.uri).load()
    else:
        ds = linac_scan()
    figures = measure(ds, image=None if args.no_image else "lps")
    save(
        "surrogate",
        {k: (v.summary() if isinstance(v, Metrics) else v) for k, v in figures.items()},
    )
    print(report(figures))


if __name__ == "__main__":
    main()
