"""The trip-classifier service kind: training and promotion, the gate, live
classification of replayed, kept and malformed trip events, and the real
CEBAF example."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import wakefield.api as api
from wakefield.datastore import Datastore
from wakefield.errors import EventError
from wakefield.events import Event
from wakefield.loader import loads_workflow
from wakefield.runtime.ledger import Ledger
from wakefield.service import DATASET_READY, MODEL_READY, HandlerContext, ServiceContext
from wakefield.services.replay import inline_dataset
from wakefield.services.simulators.srf import (
    CAVITY_LABELS,
    CLASSIFIER_SIGNALS,
    FAULT_TYPES,
    simulate_trip_dataset,
)
from wakefield.services.trip_classifier.features import feature_names
from wakefield.services.trip_classifier.reader import read_trip_event
from wakefield.services.trip_classifier.service import (
    CLASSIFIED,
    TripClassifier,
    TripClassifierConfig,
)
from wakefield.services.trip_classifier.serving import TripModel
from wakefield.services.trip_classifier.training import (
    TrainConfig,
    train_trip_classifier,
)

SEED = 20261203
EXAMPLE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "cebaf-trip-example"
    / "1L25"
    / "2023_02_01"
    / "210026.1"
)
needs_example = pytest.mark.skipif(
    not EXAMPLE.is_dir(),
    reason=f"the real CEBAF trip event is not at {EXAMPLE} (shared/ beside the repo)",
)

# Small and quick: these tests check the service, not the models' quality.
TINY = {
    "seed": 3,
    "epochs": 2,
    "trees": 20,
    "gate": {"min_fault_recall": 0.0, "min_cavity_accuracy": 0.0},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A datastore with 120 labelled training trips, 4 new trips (together and
    one by one) and a small model trained on the 120."""
    root = tmp_path_factory.mktemp("trips") / "data"
    store = Datastore(root)
    train = simulate_trip_dataset(120, seed=SEED)
    store.write_dataset(train, "inputs/train.zarr")
    trips = simulate_trip_dataset(4, seed=SEED + 1)
    store.write_dataset(trips, "inputs/trips.zarr")
    for i in range(4):
        store.write_dataset(trips.isel(sample=[i]), f"inputs/trip-{i}.zarr")
    result = train_trip_classifier(train, TrainConfig.load(TINY))
    model = result.model()
    model.save(store, "models/tiny")
    return SimpleNamespace(root=root, store=store, trips=trips, model=model)


def _check_result(data: dict[str, Any]) -> None:
    """A result names a cavity and a fault with probabilities and features."""
    assert data["cavity"] in CAVITY_LABELS and data["fault"] in FAULT_TYPES
    assert 0.0 < data["fault_confidence"] <= 1.0
    assert data["fault_confidence"] == pytest.approx(
        max(data["fault_probabilities"].values()), abs=1e-6
    )
    assert sum(data["fault_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(data["cavity_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert data["features"], "no features reported"
    names = set(feature_names())
    for feature in data["features"]:
        assert feature["name"] in names and feature["contribution"] > 0
        assert feature["description"]
    assert {"cnn", "trees"} <= set(data["models"])


# -- through real Ray actors ------------------------------------------------------

PIPELINE = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: trips}
    spec:
      services:
        - name: training-trips
          uses: simulation
          config:
            simulator: srf-cavity
            design: {method: random, samples: 96, seed: 5}
            chunk: 48
            workers: 2
            plots: false
          subscribe: {requests: trips.requests}
          publish: {datasets: trips.training}
        - name: classifier
          uses: trip-classifier
          config:
            training: {seed: 3, epochs: 2, trees: 20,
                       gate: {min_fault_recall: 0.0, min_cavity_accuracy: 0.0}}
          subscribe: {datasets: trips.training, trips: trips.incoming}
          publish: {models: trips.models, results: trips.results}
        - name: new-trips
          uses: simulation
          config:
            simulator: srf-cavity
            design: {method: random, samples: 3, seed: 6}
            plots: false
          subscribe: {requests: trips.requests}
          publish: {datasets: trips.new}
        - name: stream
          uses: replay
          config: {interval: 200ms, wait: true, carry: auto}
          subscribe: {datasets: trips.new, triggers: trips.models}
          publish: {samples: trips.incoming}
      start: [{topic: trips.requests}]
      complete:
        when: [{topic: trips.results, count: 3}]
        timeout: 8m
"""


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(600)
def test_trains_promotes_and_classifies_replayed_trips(workdir: Path) -> None:
    """A simulated dataset trains a model that is promoted under a low floor;
    three new trips replayed one by one each get a result with labels,
    confidences and the features behind them."""
    result = api.run(loads_workflow(textwrap.dedent(PIPELINE)))
    assert result.state == "completed", result.reason

    models = _events(result, "trips.models")
    assert len(models) == 1 and models[0]["type"] == MODEL_READY
    announced = models[0]["data"]
    assert announced["promoted"] is True and announced["reasons"] == []
    assert set(announced["fault_recall"]) == set(FAULT_TYPES)
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in announced["plots"])
    store = Datastore(result.datastore)
    artifact = models[0]["dataref"]["uri"]
    assert b'"metrics"' in store.read_artifact(artifact, "metrics.json")

    results = result.results["trips.results"]
    assert [r["data"]["trip"]["sample"] for r in results] == [0, 1, 2]
    for event in results:
        assert event["type"] == CLASSIFIED
        _check_result(event["data"])
        assert event["data"]["model"] == artifact
        assert event["data"]["truth"]["fault"] in FAULT_TYPES


def _events(result: Any, topic: str) -> list[dict[str, Any]]:
    bus = api.connect(bus=result.bus)
    consumer = bus.consumer([topic], group=None, start="earliest")
    found = []
    while records := consumer.poll(timeout=0.5, max_records=100):
        found += [
            r.event.model_dump(mode="json")
            for r in records
            if r.event is not None and r.event.runid == result.run_id
        ]
    consumer.close()
    return found


SERVING = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: {name}}}
    spec:
      datastore: {{root: {root}}}
      topics:
        - {{name: {name}.trips, partitions: 1, external: true}}
        - {{name: {name}.datasets, partitions: 1, external: true}}
      services:
        - name: classifier
          uses: trip-classifier
          config: {config}
          subscribe: {{datasets: {name}.datasets, trips: {name}.trips}}
          publish: {{models: {name}.models, results: {name}.results}}
          retry: {{attempts: 2, backoff: 50ms}}
      complete:
        when: [{{topic: {name}.results, count: {count}}}]
        timeout: 6m
        fail_on_deadletter: false
"""


def _wait_handled(store: Datastore, workflow: str, ids: list[str]) -> None:
    ledger = Ledger(store, workflow, "classifier")
    deadline = time.monotonic() + 240
    while not all((e := ledger.get(i)) and e.state == "done" for i in ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"the classifier did not handle {ids} in time")
        time.sleep(0.2)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(600)
def test_trips_before_a_model_are_classified_once_promoted(
    workdir: Path, tiny: SimpleNamespace
) -> None:
    """Trips that arrive before any model (by reference and inline) are kept
    and classified when a model is promoted; a later trip is classified live."""
    text = SERVING.format(
        name="early", root=tiny.root, config={"training": TINY}, count=4
    )
    wf = loads_workflow(textwrap.dedent(text))
    run = api.start(wf)
    store = tiny.store

    early = [
        api.publish(
            wf,
            "early.trips",
            "org.example.trip",
            {"note": "by reference"},
            dataref=store.ref(f"inputs/trip-{i}.zarr"),
            run_id=run.run_id,
        )[0]
        for i in range(2)
    ]
    inline = inline_dataset(tiny.trips.isel(sample=[2]), keep_attrs=False)
    early.append(
        api.publish(
            wf, "early.trips", "org.example.trip", {"inline": inline}, run_id=run.run_id
        )[0]
    )
    _wait_handled(store, "early", [e.id for e in early])

    api.publish(
        wf,
        "early.datasets",
        DATASET_READY,
        dataref=store.ref("inputs/train.zarr"),
        run_id=run.run_id,
    )
    late, _ = api.publish(
        wf,
        "early.trips",
        "org.example.trip",
        dataref=store.ref("inputs/trip-3.zarr"),
        run_id=run.run_id,
    )
    result = run.wait()
    assert result.state == "completed", result.reason

    results = result.results["early.results"]
    assert {r["causationid"] for r in results} == {e.id for e in early} | {late.id}
    for event in results:
        _check_result(event["data"])
    answered = {r["causationid"]: r["data"] for r in results}
    assert answered[early[2].id]["trip"]["source"] == "inline"
    truth = [str(FAULT_TYPES[int(f)]) for f in tiny.trips["fault"].values]
    assert [answered[e.id]["truth"]["fault"] for e in early] == truth[:3]


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(600)
def test_malformed_trip_is_deadlettered_and_later_trips_classified(
    workdir: Path, tiny: SimpleNamespace
) -> None:
    """A trip without waveforms and one without the needed signals are retried,
    then dead-lettered with the reason; the trips after them are classified
    by the model named in the config."""
    text = SERVING.format(
        name="bad", root=tiny.root, config={"model": "models/tiny"}, count=2
    )
    wf = loads_workflow(textwrap.dedent(text))
    run = api.start(wf)
    partial = tiny.trips.isel(sample=[0]).sel(signal=["GMES", "GASK"])
    bad = [
        api.publish(wf, "bad.trips", "org.example.trip", {"n": 1}, run_id=run.run_id),
        api.publish(
            wf,
            "bad.trips",
            "org.example.trip",
            {"inline": inline_dataset(partial, keep_attrs=False)},
            run_id=run.run_id,
        ),
    ]
    good = [
        api.publish(
            wf,
            "bad.trips",
            "org.example.trip",
            dataref=tiny.store.ref(f"inputs/trip-{i}.zarr"),
            run_id=run.run_id,
        )[0]
        for i in (0, 1)
    ]
    result = run.wait()
    assert result.state == "completed", result.reason

    assert [r["causationid"] for r in result.results["bad.results"]] == [
        e.id for e in good
    ]
    letters = _events(result, "bad.deadletter")
    assert [d["data"]["event"]["id"] for d in letters] == [e.id for e, _ in bad]
    assert all(d["data"]["attempts"] == 2 for d in letters)
    assert "carries no waveforms" in letters[0]["data"]["error"]["message"]
    assert (
        "lacks the signals ['CRFP', 'DETA2']" in letters[1]["data"]["error"]["message"]
    )


# -- the service's handlers, in this process ---------------------------------------


def _context(store: Datastore) -> ServiceContext:
    return ServiceContext(
        "wf", "classifier", "run-1", 0, store, "wakefield://wf/classifier"
    )


def _handle(service: TripClassifier, event: Event, port: str) -> HandlerContext:
    ctx = HandlerContext(
        service.context,
        event,
        outputs={"models": "wf.models", "results": "wf.results"},
    )
    service.handle(event, port, ctx)
    return ctx


def test_gate_refuses_a_model_and_the_previous_one_keeps_serving(
    tmp_path: Path, tiny: SimpleNamespace
) -> None:
    """A model under the recall floor is announced as not promoted, with the
    reason; the model promoted before it stays in the state and keeps serving,
    also in a restarted service."""
    store = Datastore(tmp_path / "data")
    store.write_dataset(tiny.store.open_dataset("inputs/train.zarr").load(), "train")
    store.write_dataset(tiny.trips.isel(sample=[0]), "trip")
    dataset = store.ref("train")

    lenient = TripClassifier(
        TripClassifierConfig.load({"training": TINY}), _context(store)
    )
    lenient.setup()
    first = _handle(
        lenient, Event(source="t", type=DATASET_READY, dataref=dataset), "datasets"
    )
    promoted = first.emitted[0].event
    assert promoted.data["promoted"] is True

    strict = {**TINY, "seed": 4, "gate": {"min_fault_recall": 1.0}}
    refusing = TripClassifier(
        TripClassifierConfig.load({"training": strict}), _context(store)
    )
    refusing.setup()  # as a restarted actor: serves what was promoted
    assert refusing.model is not None and refusing.model.ref == promoted.dataref
    second = _handle(
        refusing, Event(source="t", type=DATASET_READY, dataref=dataset), "datasets"
    )
    refused = second.emitted[0].event
    assert refused.data["promoted"] is False
    assert any("below the floor 1.000" in r for r in refused.data["reasons"])
    assert refused.dataref != promoted.dataref
    assert refused.data["serving"] == promoted.dataref.uri

    trip = _handle(
        refusing, Event(source="t", type="trip", dataref=store.ref("trip")), "trips"
    )
    answer = trip.emitted[0].event
    assert answer.type == CLASSIFIED and answer.data["model"] == promoted.dataref.uri


def test_malformed_trips_raise_event_errors(
    tiny: SimpleNamespace, tmp_path: Path
) -> None:
    """Trips with no waveforms, non-finite values or too many inline values
    fail their handler with an EventError that says what is wrong."""
    store = Datastore(tmp_path / "data")
    tiny.model.save(store, "model")
    config = TripClassifierConfig.load({"model": "model", "inline_max_values": 1000})
    service = TripClassifier(config, _context(store))
    service.setup()

    with pytest.raises(EventError, match="carries no waveforms"):
        _handle(service, Event(source="t", type="trip", data={"x": 1}), "trips")
    big = inline_dataset(tiny.trips.isel(sample=[0]), keep_attrs=False)
    with pytest.raises(EventError, match="over inline_max_values 1000"):
        _handle(service, Event(source="t", type="trip", data={"inline": big}), "trips")
    spoilt = tiny.trips.isel(sample=[1]).copy(deep=True)
    spoilt["waveform"][0, 2, 0, 5] = np.nan
    store.write_dataset(spoilt, "spoilt")
    with pytest.raises(EventError, match="1 values that are not finite"):
        _handle(
            service,
            Event(source="t", type="trip", dataref=store.ref("spoilt")),
            "trips",
        )


def test_model_artifact_reloads_with_the_same_answers(
    tiny: SimpleNamespace, tmp_path: Path
) -> None:
    """A published model loads back (no pickle) and gives the same probabilities;
    its attribution adds up to the forest's probability."""
    loaded = TripModel.load(tiny.store, "models/tiny")
    waveform = loaded.prepare(tiny.trips)
    before = tiny.model.probabilities(waveform)
    after = loaded.probabilities(waveform)
    for name in ("fault", "cavity"):
        np.testing.assert_allclose(before[name], after[name], atol=1e-6)
    named = after["fault"].argmax(1)
    base, share = loaded.fault_forest.contributions(after["features"], named)
    np.testing.assert_allclose(
        base + share.sum(1), after["trees_fault"][np.arange(4), named], atol=1e-9
    )


@needs_example
def test_classifies_the_real_cebaf_example(
    tiny: SimpleNamespace, tmp_path: Path
) -> None:
    """The reader and a trained model classify the recorded CEBAF trip: the
    full-rate record is put on the model's grid and named, through the service."""
    event = read_trip_event(EXAMPLE, signals=CLASSIFIER_SIGNALS)
    verdict = tiny.model.classify(event, top=3)[0]
    _check_result(verdict)

    store = Datastore(tmp_path / "data")
    tiny.model.save(store, "model")
    store.write_dataset(event, "cebaf-trip")
    service = TripClassifier(
        TripClassifierConfig.load({"model": "model"}), _context(store)
    )
    service.setup()
    ctx = _handle(
        service,
        Event(source="t", type="trip", dataref=store.ref("cebaf-trip")),
        "trips",
    )
    data = ctx.emitted[0].event.data
    assert data["trip"]["source"] == "cebaf-trip" and "truth" not in data
    assert data["fault"] == verdict["fault"] and data["cavity"] == verdict["cavity"]


def test_results_render_as_one_line_per_trip() -> None:
    """`wakefield run` shows a result as the call, its confidences and the truth,
    marking a wrong call."""
    data = {
        "trip": {"event": "e1", "sample": 3},
        "fault": "Quench_3ms",
        "fault_confidence": 0.97,
        "cavity": "5",
        "cavity_confidence": 0.99,
        "truth": {"fault": "E_Quench", "cavity": "5"},
    }
    line = TripClassifier.render(Event(source="t", type=CLASSIFIED, data=data))
    assert line == (
        "sample 3: Quench_3ms (0.97) in cavity 5 (0.99); truth E_Quench in 5 (wrong)"
    )
    assert TripClassifier.render(Event(source="t", type="other", data={})) is None
