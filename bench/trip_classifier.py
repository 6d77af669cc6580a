"""Benchmark of the trip classifier on simulated C100 trip events.

Simulates a labelled dataset with the srf-cavity simulator, trains the CNN
and the random forest, prints per-class recall, macro-F1, cavity accuracy,
training time and inference rate, writes the plots and the models, and
classifies the real CEBAF example event when ../shared/data has it.

    .venv/bin/python bench/trip_classifier.py --events 2000 --out /tmp/trips
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from wakefield.services.simulators.srf import (
    CAVITY_LABELS,
    FAULT_TYPES,
    simulate_trip_dataset,
)
from wakefield.services.trip_classifier.features import dataset_features
from wakefield.services.trip_classifier.models import describe, predict_cnn
from wakefield.services.trip_classifier.plots import (
    plot_confusion,
    plot_feature_importance,
    plot_learning_curves,
)
from wakefield.services.trip_classifier.reader import read_trip_event, to_grid
from wakefield.services.trip_classifier.training import (
    TrainConfig,
    train_trip_classifier,
)

EXAMPLE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "cebaf-trip-example"
    / "1L25"
    / "2023_02_01"
    / "210026.1"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("trip-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    begin, cpu = time.perf_counter(), time.process_time()
    ds = simulate_trip_dataset(args.events, seed=args.seed)
    print(
        f"simulated {args.events} events in {time.perf_counter() - begin:.1f} s "
        f"wall, {time.process_time() - cpu:.1f} s CPU; "
        f"{ds['waveform'].nbytes / 2**20:.0f} MiB of waveforms"
    )

    begin = time.perf_counter()
    result = train_trip_classifier(ds, TrainConfig(seed=args.seed, epochs=args.epochs))
    print(f"trained in {time.perf_counter() - begin:.1f} s: {result.timings}")
    for name, report in result.metrics.items():
        recall = ", ".join(
            f"{c}: {r:.3f}" for c, r in zip(report.classes, report.recall, strict=True)
        )
        print(f"{name}: macro-F1 {report.macro_f1:.3f}, accuracy {report.accuracy:.3f}")
        print(f"  recall: {recall}")
    print(f"promoted: {result.decision.promoted} {result.decision.reasons}")

    out = args.out
    result.save(out / "model")
    plot_learning_curves(result.history, out / "learning.png")
    for name, report in result.metrics.items():
        plot_confusion(report, out / f"confusion_{name}.png", title=name)
    forest = result.fault_forest
    plot_feature_importance(
        forest.feature_names, forest.importances, out / "importance_fault.png"
    )

    if EXAMPLE.is_dir():
        event = to_grid(read_trip_event(EXAMPLE))
        x = result.normalizer(event["waveform"].values[None], event["time"].values)
        cavity_prob, fault_prob = predict_cnn(result.cnn, x)
        verdict = describe(
            cavity_prob, fault_prob, list(CAVITY_LABELS), list(FAULT_TYPES)
        )[0]
        features = dataset_features(event).values
        fault_p = result.fault_forest.predict_proba(features)[0]
        cavity_p = result.cavity_forest.predict_proba(features)[0]
        trees = {
            "fault": {
                f: round(float(p), 3) for f, p in zip(FAULT_TYPES, fault_p, strict=True)
            },
            "cavity": {
                c: round(float(p), 3)
                for c, p in zip(CAVITY_LABELS, cavity_p, strict=True)
            },
        }
        print("real CEBAF event, CNN:", json.dumps(verdict, indent=1))
        print("real CEBAF event, forest:", json.dumps(trees, indent=1))
    else:
        print(f"no real example at {EXAMPLE}; skipped")


if __name__ == "__main__":
    main()
