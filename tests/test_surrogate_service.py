"""The surrogate kind on real Ray actors and the embedded bus: train on a
scan, answer predict requests (also ones sent before the model existed),
refuse bad ones without stopping, and swap in a newer model while requests
keep being answered."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import wakefield.api as api
from test_surrogate import analytic_scan, config
from wakefield.bus import open_bus
from wakefield.datastore import Datastore
from wakefield.events import Event
from wakefield.loader import loads_workflow
from wakefield.service import MODEL_READY
from wakefield.services.surrogate import SurrogateModel, train

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]

PREDICT = "org.wakefield.predict"

TRAIN_AND_SERVE = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: surr}
    spec:
      topics:
        - {name: surr.requests, external: true, partitions: 1}
      services:
        - name: scan
          uses: simulation
          config:
            simulator: "wakefield.testing:Analytic"
            design: {method: sobol, samples: 256, seed: 2}
            chunk: 128
            plots: false
          subscribe: {requests: surr.scans}
          publish: {datasets: surr.datasets}
        - name: surrogate
          uses: surrogate
          config:
            image: spot
            network: {hidden: [32, 32]}
            optimizer: {name: adam, lr: 0.005}
            training: {epochs: 30, batch_size: 32}
            uncertainty: {members: 2}
            lume: true
          subscribe: {datasets: surr.datasets, requests: surr.requests}
          publish: {models: surr.models, predictions: surr.predictions}
      start:
        - {topic: surr.scans}
        - topic: surr.requests
          type: org.wakefield.predict
          data: {settings: {x: [0.5, -0.5], z: [1.0, 1.5]}}
      complete:
        when: [{topic: surr.predictions, count: 6}]
        timeout: 4m
"""


def _events(bus_url: str, topic: str, run_id: str) -> list[Event]:
    consumer = open_bus(bus_url).consumer([topic], group=None, start="earliest")
    found = []
    while records := consumer.poll(timeout=0.3, max_records=1000):
        found += [r.event for r in records if r.event and r.event.runid == run_id]
    consumer.close()
    return found


def _wait_for(what: str, probe: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return found


def test_trains_on_a_scan_and_answers_requests_good_and_bad(workdir: Path) -> None:
    """simulation -> surrogate -> predictions: a request sent before the model
    existed is answered once it is; bad requests get error responses and a
    good one after them is still answered; images come by reference."""
    wf = loads_workflow(textwrap.dedent(TRAIN_AND_SERVE), filename="surr.yaml")
    run = api.start(wf)
    models = _wait_for(
        "the model", lambda: _events(run.bus_url, "surr.models", run.run_id)
    )

    requests = {
        "good": {"settings": {"x": [0.1, 0.2, 0.3], "z": [0.5, 1.0, 1.5]}},
        "missing": {"settings": {"x": [0.1]}},
        "shape": {"settings": {"x": [[0.1, 0.2]], "z": [1.0]}},
        "outside": {"settings": {"x": [0.2, 4.0], "z": [1.0, 1.0]}},
        "records": [{"x": 0.1, "z": 0.5}, {"x": -0.7, "z": 1.9}],
    }
    sent = {
        name: api.publish(wf, "surr.requests", PREDICT, data, run_id=run.run_id)[0].id
        for name, data in requests.items()
    }
    result = run.wait()
    assert result.state == "completed", result.reason

    model_event = models[0]
    assert model_event.type == MODEL_READY and model_event.dataref is not None
    summary = model_event.data
    assert summary["outputs"] == ["y"] and summary["image"] == "spot"
    assert summary["metrics"]["samples"]["train"] > 100
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in summary["plots"])
    assert len(summary["plots"]) == 3 and summary["lume"]["kind"] == "artifact"

    answers = {
        e.data["request"]: e
        for e in _events(run.bus_url, "surr.predictions", run.run_id)
    }
    store = Datastore(run.datastore_root)
    model = SurrogateModel.load(store, model_event.dataref)

    early = answers[f"{run.run_id}.start.1"]
    assert early.type == "org.wakefield.prediction"
    assert early.causationid == f"{run.run_id}.start.1"
    good = answers[sent["good"]]
    expected = model.predict(requests["good"]["settings"])
    np.testing.assert_allclose(good.data["outputs"]["y"]["mean"], expected.mean["y"])
    assert good.data["outputs"]["y"]["unit"] == "m^2"
    assert all(s > 0 for s in good.data["outputs"]["y"]["std"])
    assert good.data["model"] == model_event.dataref.dump()
    images = store.open_dataset(good.dataref)
    assert images["spot"].shape == (3, 8, 8) and images["spot"].attrs["units"] == "1"

    for bad, text in (
        ("missing", "missing ['z']"),
        ("shape", "1-D"),
        ("outside", "x = 4 m in sample 1"),
    ):
        answer = answers[sent[bad]]
        assert answer.type == "org.wakefield.prediction.error", answer.data
        assert text in answer.data["error"]["message"]
    assert answers[sent["outside"]].data["out_of_range"] == [
        {"sample": 1, "settings": ["x"]}
    ]
    assert answers[sent["records"]].type == "org.wakefield.prediction"
    assert result.status["services"]["surrogate"]["deadlettered"] == 0


SWAP = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: swap}
    spec:
      topics:
        - {name: swap.requests, external: true, partitions: 1}
      services:
        - name: scan
          uses: simulation
          config:
            simulator: "wakefield.testing:Analytic"
            design: {method: sobol, samples: 256, seed: 3}
            chunk: 128
            plots: false
          subscribe: {requests: swap.scans}
          publish: {datasets: swap.datasets}
        - name: trainer
          uses: surrogate
          config:
            network: {hidden: [32, 32]}
            training: {epochs: 80, batch_size: 16, patience: null}
            uncertainty: {members: 2}
            plots: false
          subscribe: {datasets: swap.datasets}
          publish: {models: swap.models}
        - name: server
          uses: surrogate
          config: {model: models/first}
          subscribe: {models: swap.models, requests: swap.requests}
          publish: {predictions: swap.predictions}
      start: [{topic: swap.scans}]
      complete:
        when: [{topic: swap.predictions, count: 100000}]
        timeout: 4m
"""


def test_a_newer_model_replaces_the_served_one_without_dropping_requests(
    workdir: Path,
) -> None:
    """A server starts from a configured model; while a trainer trains a newer
    one, requests keep being answered by the first; then the newer one takes
    over, and every request gets exactly one answer, none an error."""
    first, _ = train(analytic_scan(150), config(uncertainty={"method": "none"}))
    first.save(Datastore(workdir / ".wakefield" / "data"), "models/first")
    wf = loads_workflow(textwrap.dedent(SWAP), filename="swap.yaml")
    run = api.start(wf)

    def answers() -> list[Event]:
        return _events(run.bus_url, "swap.predictions", run.run_id)

    def served_by_newer() -> bool:
        found = answers()
        return (
            bool(found) and found[-1].data.get("model", {}).get("uri") != "models/first"
        )

    sent: list[str] = []
    deadline = time.monotonic() + 200
    after_swap = 0
    try:
        while after_swap < 5:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no newer model served; answers: {len(answers())}"
                )
            x = float(np.sin(len(sent)))
            event, _ = api.publish(
                wf,
                "swap.requests",
                PREDICT,
                {"settings": {"x": [x], "z": [1.0]}},
                run_id=run.run_id,
            )
            sent.append(event.id)
            if after_swap or served_by_newer():
                after_swap += 1
            time.sleep(0.2)
        got = _wait_for(
            "every answer",
            lambda: len(found := answers()) >= len(sent) and found,
            timeout=60,
        )
    finally:
        run.cancel("test finished")
        run.wait()

    assert sorted(e.data["request"] for e in got) == sorted(sent)
    assert {e.type for e in got} == {"org.wakefield.prediction"}
    by_request = {e.data["request"]: e for e in got}
    uris = [by_request[i].data["model"]["uri"] for i in sent]
    switch = next(i for i, u in enumerate(uris) if u != "models/first")
    assert switch > 0 and all(u == "models/first" for u in uris[:switch])
    assert len(set(uris[switch:])) == 1 and uris[switch].startswith("runs/")

    # Some answers from the first model came while the trainer was training.
    status = _events(run.bus_url, "swap.status", run.run_id)
    training = [
        s.time
        for s in status
        if s.type.endswith(".progress") and s.data.get("service") == "trainer"
    ]
    assert training
    during = [
        by_request[i] for i in sent[:switch] if by_request[i].time > min(training)
    ]
    assert during, "no request was answered while the newer model trained"
