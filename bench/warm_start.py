"""The inverse-model warm start against a cold start, on reachable targets.

A scan of the linac trains the surrogate and the inverse model (as in the
main job).  Then ``TARGETS`` held-out settings, drawn at random and not in
the scan, are simulated; their outputs are the targets, so each one is
reachable.  Every target is tuned from the warm start and from the nominal
settings (cold), with Nelder-Mead, Powell and L-BFGS-B (gradients from
the surrogate), against the surrogate.
Reported: the share of targets brought within tolerance and the mean number
of objective evaluations, warm against cold; and, for a few tuned results,
the surrogate's prediction against the simulator at the tuned settings.
"""

from __future__ import annotations

import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import save, table

SCAN_SAMPLES = 2048
TARGETS = 100
CHECKED = 5
METHODS = ("nelder-mead", "powell", "l-bfgs-b")
TOLERANCES = {
    "energy": 0.002,
    "bc1_bunch_length": 0.03,
    "bunch_length": 0.03,
    "energy_spread": 0.05,
}
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "linac-tuning.yaml"


def _trained(root: str) -> tuple[Any, Any, Any]:
    """The main job's scan and surrogate (its tuner not needed), then the inverse."""
    from wakefield import api
    from wakefield.datastore import Datastore
    from wakefield.loader import load_workflow
    from wakefield.service import ServiceContext
    from wakefield.services.warm_start.service import WarmStart, WarmStartConfig

    wf = load_workflow(WORKFLOW)
    wf.spec.services[0].config.design.samples = SCAN_SAMPLES
    wf.spec.start = wf.spec.start[:1]
    wf.spec.complete.when[0].topic = "linac-tuning.models"
    wf.spec.complete.when[0].count = 1
    wf.spec.services = [s for s in wf.spec.services if s.name != "tuner"]
    result = api.run(wf, datastore=f"{root}/data", bus_url=f"embedded://{root}/bus")
    if not result.ok:
        raise RuntimeError(f"the scan and surrogate run failed: {result.reason}")
    store = Datastore(result.datastore)
    model_event = result.results["linac-tuning.models"][0]
    scan_ref = _find_scan(store)

    tuner_spec = load_workflow(WORKFLOW).service("tuner")
    config = WarmStartConfig.load(
        {**tuner_spec.config.dump(), "plots": False, "cold_start": True}
    )
    context = ServiceContext(
        "bench", "tuner", "bench", 0, store, "wakefield://bench/tuner"
    )
    tuner = WarmStart(config, context)
    from wakefield.events import DataRef, Event
    from wakefield.service import HandlerContext

    dataset_event = Event(
        source="bench",
        type="org.wakefield.dataset.ready",
        dataref=scan_ref,
        runid="bench",
    )
    tuner._learn_inverse(
        dataset_event, HandlerContext(context, dataset_event, outputs={})
    )
    model_ref = DataRef.load(model_event["dataref"])
    model_evt = Event(
        source="bench", type="org.wakefield.model.ready", dataref=model_ref
    )
    tuner._learn_surrogate(model_evt, HandlerContext(context, model_evt, outputs={}))
    return tuner, store, scan_ref


def _find_scan(store: Any) -> Any:
    for manifest in Path(store.root).rglob("scan.zarr.wakefield.json"):
        uri = str(manifest.relative_to(store.root)).removesuffix(".wakefield.json")
        return store.ref(uri)
    raise RuntimeError("no scan found in the benchmark's datastore")


def _held_out(n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from wakefield.registry import load_simulator

    cls = load_simulator("linac")
    sim = cls(cls.Options.load({"n_particles": 10_000}))
    rng = np.random.default_rng(12345)  # not the scan's Sobol points
    settings = {s.name: rng.uniform(s.low, s.high, n) for s in sim.settings()}
    batch = sim.simulate(settings, rng)
    keep = np.array([i not in batch.failures for i in range(n)])
    return (
        {k: v[keep] for k, v in settings.items()},
        {k: np.asarray(v)[keep] for k, v in batch.outputs.items()},
    )


def run() -> str:
    from wakefield.services.warm_start.service import TuningRequest

    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="wf-bench-tune-")
    tuner, _, _ = _trained(root)
    _, outputs = _held_out(TARGETS)
    n = len(outputs["energy"])

    rows, figures, answers = [], {}, {}
    for method in METHODS:
        stats: dict[str, list[Any]] = {
            "warm_reached": [],
            "cold_reached": [],
            "warm_evals": [],
            "cold_evals": [],
        }
        for i in range(n):
            request = TuningRequest.load(
                {
                    "targets": {
                        name: {"value": float(outputs[name][i]), "relative": rel}
                        for name, rel in TOLERANCES.items()
                    },
                    "optimizer": method,
                    "cold": True,
                    "max_evaluations": 400,
                }
            )
            answer = tuner.solve(request)
            answers.setdefault(method, []).append(answer)
            stats["warm_reached"].append(answer["converged"])
            stats["cold_reached"].append(answer["cold"]["converged"])
            stats["warm_evals"].append(answer["evaluations"])
            stats["cold_evals"].append(answer["cold"]["evaluations"])
        warm_share = 100 * statistics.fmean(stats["warm_reached"])
        cold_share = 100 * statistics.fmean(stats["cold_reached"])
        warm_mean = statistics.fmean(stats["warm_evals"])
        cold_mean = statistics.fmean(stats["cold_evals"])
        figures[method] = {
            "targets": n,
            "warm_reached_percent": warm_share,
            "cold_reached_percent": cold_share,
            "warm_mean_evaluations": warm_mean,
            "cold_mean_evaluations": cold_mean,
            "ratio": cold_mean / warm_mean,
        }
        rows.append(
            {
                "method": method,
                "targets": n,
                "warm reached %": warm_share,
                "cold reached %": cold_share,
                "warm mean evals": warm_mean,
                "cold mean evals": cold_mean,
                "cold / warm": cold_mean / warm_mean,
            }
        )

    checks = _check_with_simulator(answers["nelder-mead"][:CHECKED])
    figures["checked_against_simulator"] = checks
    figures["seconds"] = time.monotonic() - started
    save("warm_start", figures)
    text = table(
        f"tuning {n} reachable targets (held-out simulated settings), "
        "against the surrogate, at most 400 evaluations",
        rows,
    )
    text += table(
        "surrogate against simulator at tuned settings (Nelder-Mead, warm): "
        "relative difference to the target",
        checks,
    )
    return text + (
        "  tolerances: "
        + ", ".join(f"{k} {100 * v:g} %" for k, v in TOLERANCES.items())
        + "\n"
    )


def _check_with_simulator(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from wakefield.registry import load_simulator

    cls = load_simulator("linac")
    sim = cls(cls.Options.load({"n_particles": 10_000}))
    names = [s.name for s in sim.settings()]
    settings = {k: np.array([a["settings"][k] for a in answers]) for k in names}
    batch = sim.simulate(settings, np.random.default_rng(0))
    rows = []
    for i, answer in enumerate(answers):
        row: dict[str, Any] = {"target": i}
        for name, target in answer["targets"].items():
            simulated = float(batch.outputs[name][i])
            row[f"{name} surrogate %"] = (
                100 * (answer["outputs"][name] - target["value"]) / target["value"]
            )
            row[f"{name} simulator %"] = (
                100 * (simulated - target["value"]) / target["value"]
            )
        rows.append(row)
    return rows


if __name__ == "__main__":
    print(textwrap.dedent(run()))
