"""The trip classifier: how well it names simulated trips, and how fast live.

Quality: simulates 2,000 labelled C100 trip events (seed 0), trains the CNN
and the forest with the default settings (what ``workflows/srf-trips.yaml``
does), and reports macro-F1, accuracy and per-class recall of the served
combination, the CNN and the forest on the held-out test split and on 1,000
fresh events of another seed.  The reference is Jefferson Lab's deployed
classifier, 78.2 % fault-type and 84.9 % cavity accuracy on real CEBAF
trips (Tennant et al., PRAB 23, 114601, 2020), which simulated trips must
beat by a wide margin.

Live: the trained model is served by a ``trip-classifier`` service on the
embedded bus and local Ray.  One trip at a time, the time from publishing a
trip event (by reference, and inline) to its result event arriving: p50 and
p99.  Then a burst of trips published at once: trips classified per second.
The model's own inference time per event, in this process, is the baseline.

The real CEBAF example is classified when ``../shared/data`` has it.

    python -m bench trip_classifier
    .venv/bin/python bench/trip_classifier.py
"""

from __future__ import annotations

import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench.report import save, summary_ms, table

N_TRAIN = 2000
N_FRESH = 1000
N_LATENCY = 60
N_BURST = 200
EXAMPLE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "cebaf-trip-example"
    / "1L25"
    / "2023_02_01"
    / "210026.1"
)

WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: bench-trips}}
    spec:
      datastore: {{root: {root}/data}}
      bus: {{backend: embedded, path: {root}/bus}}
      topics: [{{name: bench.trips, partitions: 1, external: true}}]
      services:
        - name: classifier
          uses: trip-classifier
          config: {{model: {model}, top_features: 5}}
          subscribe: {{trips: bench.trips}}
          publish: {{results: bench.results}}
"""


def quality() -> tuple[Any, dict[str, Any]]:
    """Train on simulated trips; metrics on the test split and on fresh trips."""
    from wakefield.services.simulators.srf import simulate_trip_dataset
    from wakefield.services.trip_classifier.metrics import classification_report
    from wakefield.services.trip_classifier.training import (
        TrainConfig,
        train_trip_classifier,
    )

    begin = time.perf_counter()
    train = simulate_trip_dataset(N_TRAIN, seed=0)
    fresh = simulate_trip_dataset(N_FRESH, seed=99)
    simulate_s = time.perf_counter() - begin
    begin = time.perf_counter()
    result = train_trip_classifier(train, TrainConfig(seed=0))
    train_s = time.perf_counter() - begin

    model = result.model()
    begin = time.perf_counter()
    p = model.probabilities(model.prepare(fresh))
    infer_s = (time.perf_counter() - begin) / N_FRESH
    faults = list(fresh["fault"].attrs["categories"])
    cavities = list(fresh["cavity_label"].attrs["categories"])
    fault, cavity = fresh["fault"].values, fresh["cavity_label"].values
    fresh_reports = {}
    for name, (pf, pc) in {
        "ensemble": (p["fault"], p["cavity"]),
        "cnn": (p["cnn_fault"], p["cnn_cavity"]),
        "trees": (p["trees_fault"], p["trees_cavity"]),
    }.items():
        fresh_reports[name] = (
            classification_report(fault, pf.argmax(1), faults),
            classification_report(cavity, pc.argmax(1), cavities),
        )
    figures = {
        "simulate_s": simulate_s,
        "train_s": train_s,
        "model_inference_ms": infer_s * 1e3,
        "weights": result.weights,
        "promoted": result.decision.promoted,
        "epochs": len(result.history),
        "test": {
            name: {
                "fault_macro_f1": result.metrics[f"{name}_fault"].macro_f1,
                "fault_recall": result.metrics[f"{name}_fault"].recall_of(),
                "cavity_accuracy": result.metrics[f"{name}_cavity"].accuracy,
            }
            for name in ("ensemble", "cnn", "trees")
        },
        "fresh": {
            name: {
                "fault_macro_f1": f.macro_f1,
                "fault_accuracy": f.accuracy,
                "fault_recall": f.recall_of(),
                "cavity_accuracy": c.accuracy,
                "fault_confusion": f.confusion,
            }
            for name, (f, c) in fresh_reports.items()
        },
    }
    return (result, fresh), figures


def live(model: Any, trips: Any) -> dict[str, Any]:
    """Publish -> result through a trip-classifier service on the embedded bus."""
    from wakefield import api
    from wakefield.datastore import Datastore
    from wakefield.loader import loads_workflow
    from wakefield.services.replay import inline_dataset

    root = tempfile.mkdtemp(prefix="wf-bench-trips-")
    store = Datastore(f"{root}/data")
    model.save(store, "models/trips")
    refs = [
        store.write_dataset(trips.isel(sample=[i]), f"trips/{i}.zarr")
        for i in range(N_BURST)
    ]
    inline = [
        inline_dataset(trips.isel(sample=[i]), keep_attrs=False)
        for i in range(N_LATENCY)
    ]
    wf = loads_workflow(
        textwrap.dedent(WORKFLOW.format(root=root, model="models/trips"))
    )
    run = api.start(wf)
    bus = api.connect(wf, run.bus_url)
    producer = bus.producer()
    results = bus.consumer(["bench.results"], group=None, start="latest")
    try:
        _send(producer, results, run.run_id, [{"dataref": refs[0]}], timeout=600)
        by_reference = [
            _send(producer, results, run.run_id, [{"dataref": refs[i % len(refs)]}])
            for i in range(N_LATENCY)
        ]
        by_inline = [
            _send(producer, results, run.run_id, [{"data": {"inline": body}}])
            for body in inline
        ]
        burst = _send(producer, results, run.run_id, [{"dataref": ref} for ref in refs])
    finally:
        results.close()
        run.cancel("benchmark done")
        run.wait()
        bus.close()
    return {
        "reference": summary_ms(by_reference),
        "inline": summary_ms(by_inline),
        "burst_events": N_BURST,
        "burst_s": burst,
        "events_per_s": N_BURST / burst,
    }


def _send(
    producer: Any,
    results: Any,
    run_id: str,
    trips: list[dict[str, Any]],
    timeout: float = 300.0,
) -> float:
    """Publish trip events; seconds until every one has its result."""
    from wakefield.events import Event

    started = time.perf_counter()
    waiting = set()
    for trip in trips:
        event = Event(
            source="bench",
            type="org.example.trip",
            data=trip.get("data"),
            dataref=trip.get("dataref"),
            runid=run_id,
        )
        producer.publish("bench.trips", event, key=run_id)
        waiting.add(event.id)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for record in results.poll(timeout=0.2, max_records=500):
            if record.event is not None:
                waiting.discard(record.event.causationid or "")
    if waiting:
        raise TimeoutError(f"{len(waiting)} trips without a result in {timeout} s")
    return time.perf_counter() - started


def real_example(model: Any) -> dict[str, Any] | None:
    """The served model's verdict on the recorded CEBAF trip, if it is here."""
    if not EXAMPLE.is_dir():
        return None
    from wakefield.services.simulators.srf import CLASSIFIER_SIGNALS
    from wakefield.services.trip_classifier.reader import read_trip_event

    verdict = model.classify(read_trip_event(EXAMPLE, signals=CLASSIFIER_SIGNALS))[0]
    return {
        "cavity": verdict["cavity"],
        "cavity_confidence": verdict["cavity_confidence"],
        "fault": verdict["fault"],
        "fault_confidence": verdict["fault_confidence"],
        "features": [f["name"] for f in verdict["features"]],
        "models": verdict["models"],
    }


def run() -> str:
    (result, fresh), figures = quality()
    model = result.model()
    figures["live"] = live(model, fresh)
    figures["cebaf_example"] = real_example(model)
    save("trip_classifier", figures)
    return report(figures)


def report(figures: dict[str, Any]) -> str:
    rows = []
    for split in ("test", "fresh"):
        for name, m in figures[split].items():
            rows.append(
                {
                    "events": split,
                    "model": name,
                    "fault macro-F1": m["fault_macro_f1"],
                    "cavity accuracy": m["cavity_accuracy"],
                    "lowest fault recall": min(m["fault_recall"].values()),
                }
            )
    recall = figures["fresh"]["ensemble"]["fault_recall"]
    text = table(
        f"quality: trained on {int(N_TRAIN * 0.7)} of {N_TRAIN} simulated trips "
        f"({figures['train_s']:.0f} s, {figures['epochs']} epochs, CNN weight "
        f"{figures['weights']['fault']:.2f}); test split and {N_FRESH} fresh trips"
        "; published on real CEBAF trips: 0.782 fault, 0.849 cavity accuracy",
        rows,
    )
    text += table(
        f"per-class recall, served model, {N_FRESH} fresh trips",
        [{"fault type": k, "recall": v} for k, v in recall.items()],
    )
    lv = figures["live"]
    text += table(
        "live: publish -> result through the service (embedded bus, one at a time)",
        [
            {
                "trip carried": carried,
                "n": lv[carried]["n"],
                "p50 ms": lv[carried]["p50_ms"],
                "p99 ms": lv[carried]["p99_ms"],
                "mean ms": lv[carried]["mean_ms"],
            }
            for carried in ("reference", "inline")
        ],
    )
    text += (
        f"  burst: {lv['burst_events']} trips published at once, all classified in "
        f"{lv['burst_s']:.1f} s: {lv['events_per_s']:.1f} trips/s "
        f"(the model alone: {figures['model_inference_ms']:.2f} ms per trip)\n"
    )
    example = figures["cebaf_example"]
    if example is None:
        text += f"  the real CEBAF example is not at {EXAMPLE}; skipped\n"
    else:
        text += (
            f"  real CEBAF trip (1L25, 2023-02-01 21:00:26, label unknown): cavity "
            f"{example['cavity']} ({example['cavity_confidence']:.2f}), "
            f"{example['fault']} ({example['fault_confidence']:.2f}); CNN "
            f"{example['models']['cnn']['fault']}, forest "
            f"{example['models']['trees']['fault']}\n"
        )
    return text


if __name__ == "__main__":
    print(run())
