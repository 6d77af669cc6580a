"""The fel-gan service kind: held-out split, training and the fidelity
gate, sampling requests answered by reference (and refused with reasons),
kept requests, restarts, and the whole workflow through real Ray actors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

import wakefield.api as api
from wakefield.datastore import Datastore
from wakefield.design import Design, sample
from wakefield.errors import ServiceError
from wakefield.events import Event
from wakefield.loader import loads_workflow
from wakefield.service import DATASET_READY, MODEL_READY, HandlerContext, ServiceContext
from wakefield.services.fel_gan.service import (
    SAMPLES,
    SAMPLES_ERROR,
    FelGanConfig,
    FelGanService,
    split,
)
from wakefield.services.fel_gan.training import PulseDataset
from wakefield.services.simulators.sase import SaseOptions, SasePulseSimulator
from wakefield.variables import Setting

SEED = 20261204
NAMES = ["peak_current", "bunch_length", "energy_spread"]
OPTIONS = SaseOptions(time_window=4e-15, n_time=64)
CONDITIONS = [
    (2500.0, 0.5e-15, 0.5e-4),
    (2500.0, 0.7e-15, 1.5e-4),
    (3500.0, 0.5e-15, 1.5e-4),
    (3500.0, 0.7e-15, 0.5e-4),
]
TINY_TRAINING = {
    "epochs": 3,
    "batch_size": 32,
    "critic_steps": 2,
    "critic_width": 4,
    "calibration_shots": 50,
    "seed": 3,
    "threads": 1,
}
# Thresholds no generator fails: these tests check the service, not the GAN.
LENIENT = {
    "mean_energy": 1.0e9,
    "modes": 1.0e9,
    "spike_count": 1.0e9,
    "spike_width": 1.0e9,
    "spectral_width": 1.0e9,
    "profile_distance": 1.0e9,
    "energy_ks": 1.0,
    "min_diversity": 0.001,
}


def scan(shots: int, seed: int = SEED) -> xr.Dataset:
    """A sase scan laid out as the simulation service writes it, ``shots``
    per condition, with the first sample flagged as failed."""
    sim = SasePulseSimulator(OPTIONS)
    settings = {
        name: np.repeat([c[i] for c in CONDITIONS], shots)
        for i, name in enumerate(NAMES)
    }
    settings["undulator_length"] = np.full(len(CONDITIONS) * shots, 30.0)
    out = sim.simulate(settings, np.random.default_rng(seed)).outputs
    variables: dict[str, Any] = {
        name: (("sample", "time"), out[name]) for name in ("field_real", "field_imag")
    }
    for name, unit in zip(NAMES, ["A", "s", ""], strict=True):
        variables[name] = xr.Variable(("sample",), settings[name], {"units": unit})
    status = np.zeros(len(settings["peak_current"]), np.int8)
    status[0] = 1
    variables["status"] = (("sample",), status)
    variables["field_real"][1][1, :] = np.nan  # non-finite: dropped too
    return xr.Dataset(
        variables, coords={"time": sim.time, "photon_energy": sim.photon_energy}
    )


def _service(store: Datastore, **config: Any) -> FelGanService:
    settings = {"training": TINY_TRAINING, "check_shots": 64, **config}
    service = FelGanService(
        FelGanConfig.load(settings),
        ServiceContext("wf", "gan", "run-1", 0, store, "wakefield://wf/gan"),
    )
    service.setup()
    return service


def _handle(service: FelGanService, event: Event, port: str) -> list[Event]:
    ctx = HandlerContext(
        service.context, event, outputs={"models": "wf.models", "samples": "wf.s"}
    )
    service.handle(event, port, ctx)
    return [e.event for e in ctx.emitted]


def _request(**data: Any) -> Event:
    return Event(source="test", type="org.wakefield.fel.request", data=data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Datastore:
    """A datastore holding a scan of 4 conditions x 40 shots."""
    store = Datastore(tmp_path_factory.mktemp("fel") / "data")
    store.write_dataset(scan(40), "inputs/scan.zarr")
    return store


def test_design_repeats_every_point() -> None:
    """repeats: n gives each design point n samples in a row, inside the ranges."""
    settings = [
        Setting(name="a", range=(0.0, 1.0), default=0.5),
        Setting(name="b", range=(2.0, 3.0), default=2.5),
    ]
    once = sample(Design(method="sobol", samples=8, seed=1), settings)
    thrice = sample(Design(method="sobol", samples=8, seed=1, repeats=3), settings)
    assert len(thrice["a"]) == 24
    np.testing.assert_array_equal(thrice["a"], np.repeat(once["a"], 3))
    np.testing.assert_array_equal(thrice["b"], np.repeat(once["b"], 3))


def test_split_holds_out_a_share_at_every_condition() -> None:
    """Each condition keeps its share of held-out shots; no shot is in both
    parts; the split is the same for the same seed."""
    data = PulseDataset.from_xarray(scan(10).isel(sample=slice(2, None)), NAMES)
    train, held = split(data, 0.3, seed=1)
    assert len(train.field) + len(held.field) == len(data.field)
    for row in data.unique_conditions():
        assert len(held.at(row)) == round(0.3 * len(data.at(row)))
    assert not set(map(complex, train.field[:, 5])) & set(
        map(complex, held.field[:, 5])
    )
    again, _ = split(data, 0.3, seed=1)
    np.testing.assert_array_equal(again.field, train.field)
    with pytest.raises(ServiceError, match="more repeats"):
        split(data, 0.05, seed=1)


def test_promotes_a_generator_and_answers_requests_by_reference(
    store: Datastore, tmp_path: Path
) -> None:
    """A generator that passes the gate is announced with its fidelity table
    and plots; a request gets a dataset of pulses in watts with statistics,
    the same pulses for the same seed; a restarted service serves it again."""
    service = _service(store, thresholds=LENIENT)
    dataset = Event(
        source="t", type=DATASET_READY, dataref=store.ref("inputs/scan.zarr")
    )
    (announced,) = _handle(service, dataset, "datasets")

    assert announced.type == MODEL_READY and announced.data["promoted"] is True
    table = announced.data["fidelity"]
    assert len(table) == len(CONDITIONS)
    assert {"mean_energy_sim", "modes_gen", "spike_count_rel"} <= set(table[0])
    assert announced.data["shots"] == {"training": 79, "held_out": 79}
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in announced.data["plots"])
    assert "history" not in announced.data  # the learning curve is in the artifact
    kept = json.loads(store.read_artifact(announced.dataref, "fidelity.json"))
    assert len(kept["fidelity"]) == len(CONDITIONS) and len(kept["history"]) == 3

    condition = dict(zip(NAMES, CONDITIONS[1], strict=True))
    (answer,) = _handle(
        service, _request(conditions=condition, shots=30, seed=5), "requests"
    )
    assert answer.type == SAMPLES, answer.data
    pulses = store.open_dataset(answer.dataref).load()
    assert pulses["power"].shape == (30, OPTIONS.n_time)
    assert pulses["power"].attrs["units"] == "W" and (pulses["power"] >= 0).all()
    energy = pulses["power"].sum("time") * (pulses.time[1] - pulses.time[0])
    np.testing.assert_allclose(pulses["pulse_energy"], energy, rtol=1e-5)
    assert answer.data["statistics"]["mean_energy"] > 0
    assert answer.data["generator"] == announced.dataref.uri

    restarted = _service(store, thresholds=LENIENT)
    (again,) = _handle(
        restarted, _request(conditions=condition, shots=30, seed=5), "requests"
    )
    np.testing.assert_array_equal(
        store.open_dataset(again.dataref)["power"].values, pulses["power"].values
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"conditions": {"peak_current": 3000.0}, "shots": 4}, "missing"),
        (
            {"conditions": {**dict(zip(NAMES, CONDITIONS[0], strict=True)), "x": 1.0}},
            "unknown",
        ),
        (
            {"conditions": dict(zip(NAMES, (9000.0, 0.6e-15, 1e-4), strict=True))},
            "outside the training ranges: peak_current=9000",
        ),
        (
            {
                "conditions": dict(zip(NAMES, CONDITIONS[0], strict=True)),
                "shots": 10**6,
            },
            "at most 100000",
        ),
        ({"shots": "many"}, "not a sampling request"),
        (
            {"conditions": dict(zip(NAMES, CONDITIONS[0], strict=True)), "seed": 2**64},
            "seed",
        ),
        (
            {
                "conditions": {
                    **dict(zip(NAMES, CONDITIONS[0], strict=True)),
                    "peak_current": True,
                }
            },
            "peak_current",
        ),
    ],
)
def test_bad_requests_get_an_error_answer(
    store: Datastore, data: dict[str, Any], says: str
) -> None:
    """A request that cannot be answered gets a samples.error saying why."""
    service = _service(store, thresholds=LENIENT)
    dataset = Event(
        source="t", type=DATASET_READY, dataref=store.ref("inputs/scan.zarr")
    )
    _handle(service, dataset, "datasets")
    (answer,) = _handle(service, _request(**data), "requests")
    assert answer.type == SAMPLES_ERROR
    assert says in answer.data["error"]


def test_unfaithful_generator_is_kept_back_and_requests_refused(
    tmp_path: Path, store: Datastore
) -> None:
    """Under the default thresholds a three-epoch generator is kept back with
    reasons; a request kept before the verdict is then answered with an
    error naming the fidelity check, never with pulses."""
    local = Datastore(tmp_path / "data")
    local.write_dataset(store.open_dataset("inputs/scan.zarr").load(), "scan.zarr")
    service = _service(local)
    condition = dict(zip(NAMES, CONDITIONS[0], strict=True))
    early = _request(conditions=condition, shots=8)
    assert _handle(service, early, "requests") == []  # kept: nothing judged yet

    dataset = Event(source="t", type=DATASET_READY, dataref=local.ref("scan.zarr"))
    announced, answer = _handle(service, dataset, "datasets")
    assert announced.data["promoted"] is False and announced.data["reasons"]
    assert announced.data["serving"] is None
    assert answer.type == SAMPLES_ERROR and "kept back" in answer.data["error"]
    assert (
        answer.id
        == early.caused(source=service.context.source, type=SAMPLES_ERROR, index=0).id
    )


WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: pulses}
    spec:
      services:
        - name: pulses
          uses: simulation
          config:
            simulator: sase
            options: {time_window: 4.0e-15, n_time: 64}
            settings:
              peak_current: {range: [2500, 3500]}
              bunch_length: {range: [0.5e-15, 0.7e-15]}
              energy_spread: {range: [0.5e-4, 1.5e-4]}
              undulator_length: {value: 30}
            design: {method: grid, samples: 8, repeats: 30, seed: 2}
            chunk: 60
            plots: false
          subscribe: {requests: pulses.scan}
          publish: {datasets: pulses.datasets}
        - name: gan
          uses: fel-gan
          config:
            training: {epochs: 2, batch_size: 32, critic_steps: 2,
                       critic_width: 4, calibration_shots: 20, seed: 1}
            check_shots: 64
            thresholds: {mean_energy: 1.0e9, modes: 1.0e9, spike_count: 1.0e9,
                         spike_width: 1.0e9, spectral_width: 1.0e9,
                         profile_distance: 1.0e9, energy_ks: 1, min_diversity: 0.001}
            plots: false
          subscribe: {datasets: pulses.datasets, requests: pulses.requests}
          publish: {models: pulses.models, samples: pulses.samples}
      start:
        - {topic: pulses.scan}
        - topic: pulses.requests
          type: org.wakefield.fel.request
          data:
            conditions: {peak_current: 3000, bunch_length: 0.6e-15, energy_spread: 1.0e-4}
            shots: 50
      complete:
        when: [{topic: pulses.samples, count: 1}]
        timeout: 8m
"""


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(600)
def test_workflow_simulates_trains_and_samples_over_the_bus(workdir: Path) -> None:
    """Through real Ray actors and the embedded bus: a sase scan with repeats,
    the GAN trained and judged on it, and a request sent at the start answered
    with 50 generated pulses by reference."""
    result = api.run(loads_workflow(textwrap.dedent(WORKFLOW)))
    assert result.state == "completed", result.reason

    (answer,) = result.results["pulses.samples"]
    assert answer["type"] == SAMPLES, answer["data"]
    pulses = Datastore(result.datastore).open_dataset(answer["dataref"]["uri"])
    assert pulses["power"].shape == (50, 64)
    assert pulses.attrs["generator"] == answer["data"]["generator"]


def test_non_finite_conditions_are_refused_even_when_extrapolating(
    store: Datastore,
) -> None:
    """allow_outside lets a request sample outside the training ranges, but
    never at NaN or infinite conditions."""
    service = _service(store, thresholds=LENIENT, allow_outside=True)
    dataset = Event(
        source="t", type=DATASET_READY, dataref=store.ref("inputs/scan.zarr")
    )
    _handle(service, dataset, "datasets")
    far = dict(zip(NAMES, (4000.0, 0.6e-15, 1e-4), strict=True))
    (answer,) = _handle(service, _request(conditions=far, shots=4), "requests")
    assert answer.type == SAMPLES and answer.data["extrapolated"]
    (answer,) = _handle(
        service, _request(conditions={**far, "peak_current": float("inf")}), "requests"
    )
    assert answer.type == SAMPLES_ERROR and "not finite" in answer.data["error"]


def test_a_condition_named_twice_is_a_config_error() -> None:
    """conditions must be distinct settings."""
    with pytest.raises(ValidationError, match="repeated: \\['peak_current'\\]"):
        FelGanConfig.load({"conditions": ["peak_current", "peak_current"]})


def test_a_scan_with_no_usable_shots_says_so(tmp_path: Path) -> None:
    """Every sample flagged: the handler fails with a reason, not a numpy error."""
    local = Datastore(tmp_path / "data")
    flagged = scan(4)
    flagged["status"][:] = 1
    local.write_dataset(flagged, "scan.zarr")
    service = _service(local)
    dataset = Event(source="t", type=DATASET_READY, dataref=local.ref("scan.zarr"))
    with pytest.raises(ServiceError, match="no usable shots"):
        _handle(service, dataset, "datasets")
