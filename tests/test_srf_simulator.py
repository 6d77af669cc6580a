"""The srf-cavity simulator: declared outputs, determinism and the physics of
each fault type."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from wakefield.errors import SimulationError
from wakefield.registry import load_simulator
from wakefield.services.simulators.srf import (
    FAULT_TYPES,
    SETTINGS,
    CryomoduleSimulator,
    RecordGrid,
    SrfOptions,
    simulate_trip_dataset,
)

SEED = 20261203
SIGNALS = ("GMES", "GASK", "CRFP", "DETA2")


def settings(n: int, **values: float) -> dict[str, np.ndarray]:
    base = {s.name: np.full(n, s.default) for s in SETTINGS}
    base.update({k: np.full(n, v) for k, v in values.items()})
    return base


def code(name: str) -> int:
    return FAULT_TYPES.index(name)


@pytest.fixture(scope="module")
def faults() -> tuple[CryomoduleSimulator, dict[str, np.ndarray]]:
    """Two events of every fault type, all faulted in cavity 3 (index 2)."""
    sim = CryomoduleSimulator(SrfOptions(signals=SIGNALS))
    kinds = np.repeat(np.arange(len(FAULT_TYPES)), 2)
    batch = sim.simulate_faults(
        settings(kinds.size, noise_level=0.5, beam_current=0.0),
        kinds,
        np.full(kinds.size, 2),
        np.random.default_rng(SEED),
    )
    assert not batch.failures
    return sim, batch.outputs


def signal(outputs: dict[str, np.ndarray], event: int, cavity: int, name: str):
    return outputs["waveform"][event, cavity, SIGNALS.index(name)]


def test_registered_under_its_name():
    """The entry point srf-cavity loads the cryomodule simulator."""
    assert load_simulator("srf-cavity") is CryomoduleSimulator


def test_outputs_have_declared_shapes(faults):
    """Every output has the dims, shape, dtype and categories it declares."""
    sim, out = faults
    n = len(out["fault"])
    for o in sim.outputs():
        assert out[o.name].shape == (n, *o.shape), o.name
        assert out[o.name].dtype == np.dtype(o.dtype), o.name
        if o.categories:
            assert out[o.name].min() >= 0 and out[o.name].max() < len(o.categories)
    coords = sim.coordinates()
    assert coords["time"].values.shape == (sim.options.grid.samples,)
    assert list(coords["signal"].values) == list(SIGNALS)
    assert np.allclose(np.diff(coords["time"].values), 0.8)


def test_labels_follow_the_fault(faults):
    """Single-cavity faults name cavity 3; Multi Cav turn off is 'multiple'."""
    _, out = faults
    multi = out["fault"] == code("Multi Cav turn off")
    assert (out["cavity_label"][multi] == 8).all()
    assert (out["cavity_label"][~multi] == 2).all()
    assert (out["faulted"][multi].sum(axis=1) >= 2).all()
    assert out["faulted"][~multi, 2].all()


def test_trip_lies_near_the_trigger(faults):
    """The first RF switch to open sits within the jitter of t = 0."""
    _, out = faults
    assert np.all(np.abs(out["trip_time"]) <= 3.0 + 0.8)


def test_same_seed_gives_same_events():
    """Two runs with one seed give identical datasets; another seed differs."""
    a = simulate_trip_dataset(6, seed=SEED)
    b = simulate_trip_dataset(6, seed=SEED)
    c = simulate_trip_dataset(6, seed=SEED + 1)
    assert np.array_equal(a["waveform"].values, b["waveform"].values)
    assert np.array_equal(a["fault"].values, b["fault"].values)
    assert not np.array_equal(a["waveform"].values, c["waveform"].values)


def test_rf_off_decays_with_the_cavity_time_constant():
    """With RF off the gradient decays as exp(-t / tau), tau = 2 Q_L / omega0."""
    sim = CryomoduleSimulator(
        SrfOptions(
            grid=RecordGrid(start=-40.0, samples=300, decimation=1), trip_jitter=0.0
        )
    )
    n = 3
    batch = sim.simulate_faults(
        settings(
            n, noise_level=0.0, beam_current=0.0, microphonics=0.5, detune_spread=0.0
        ),
        np.full(n, code("Single Cav Turn off")),
        np.array([0, 4, 7]),
        np.random.default_rng(SEED),
    )
    t = sim.coordinates()["time"].values
    for event, cavity in enumerate([0, 4, 7]):
        g = batch.outputs["waveform"][event, cavity, 0]
        trip = batch.outputs["trip_time"][event]
        window = (t >= trip + 0.4) & (t <= trip + 8.0)
        slope = np.polyfit(t[window], np.log(g[window]), 1)[0]
        q_l = batch.outputs["loaded_q"][event, cavity]
        tau = 2.0 * q_l / (2.0 * math.pi * 1497e6) * 1e3
        assert -1.0 / slope == pytest.approx(tau, rel=0.03)


def fall_time(g: np.ndarray, t: np.ndarray) -> float:
    """Time from 90 % to 20 % of the pre-trip gradient, ms."""
    base = g[t < -100].mean()
    t90 = t[np.argmax((g < 0.9 * base) & (t > -100))]
    t20 = t[np.argmax((g < 0.2 * base) & (t > -100))]
    return float(t20 - t90)


def test_quench_decays_faster_than_rf_off(faults):
    """A fast quench empties the cavity faster than switching its RF off."""
    sim, out = faults
    t = sim.coordinates()["time"].values
    single = np.flatnonzero(out["fault"] == code("Single Cav Turn off"))
    quench = np.flatnonzero(out["fault"] == code("Quench_3ms"))
    slowest_quench = max(fall_time(signal(out, e, 2, "GMES"), t) for e in quench)
    fastest_off = min(fall_time(signal(out, e, 2, "GMES"), t) for e in single)
    assert slowest_quench < 0.6 * fastest_off
    assert slowest_quench <= 4.0


def test_microphonics_oscillate_the_detune_angle(faults):
    """A Microphonics trip shows a DETA2 oscillation at 8 to 50 Hz in its cavity."""
    sim, out = faults
    t = sim.coordinates()["time"].values
    lead = (t > -200) & (t < -2)
    for e in np.flatnonzero(out["fault"] == code("Microphonics")):
        d = signal(out, e, 2, "DETA2")[lead]
        others = [signal(out, e, c, "DETA2")[lead].std() for c in (0, 5, 7)]
        assert d.std() > 3.0 * max(others)
        spectrum = np.abs(np.fft.rfft((d - d.mean()) * np.hanning(d.size)))
        freq = np.fft.rfftfreq(d.size, 0.8e-3)[spectrum[1:].argmax() + 1]
        assert 5.0 <= freq <= 55.0


def test_heat_riser_choke_detunes_and_raises_power(faults):
    """A choked heat riser holds the cavity far off tune, at more forward power."""
    _, out = faults
    late = slice(400, 500)  # -89.6 to -9.6 ms
    for e in np.flatnonzero(out["fault"] == code("Heat Riser Choke")):
        assert abs(signal(out, e, 2, "DETA2")[late].mean()) > 30.0
        # Forward power per gradient squared grows as 1 + tan^2(detune angle).
        g, p = out["waveform"][e, :, 0, late], out["waveform"][e, :, 2, late]
        per_gradient = p.mean(axis=1) / (g.mean(axis=1) ** 2)
        others = np.delete(per_gradient, 2)
        assert per_gradient[2] > 1.3 * np.median(others)


def test_quench_100ms_climbs_in_forward_power(faults):
    """Before a slow quench trips, the controller raises the forward power."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("Quench_100ms")):
        p = signal(out, e, 2, "CRFP")
        assert p[480:510].mean() > 1.3 * p[:200].mean()  # -25 to -1.6 ms


def test_multi_cav_turn_off_empties_several_cavities(faults):
    """Multi Cav turn off leaves at least two cavities without gradient."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("Multi Cav turn off")):
        g = out["waveform"][e, :, 0]
        left = g[:, 530:540].mean(axis=1) / g[:, :100].mean(axis=1)  # 14 to 22 ms
        assert (left < 0.2).sum() >= 2
        assert ((left < 0.2) == out["faulted"][e]).all()


def test_healthy_cavities_hold_their_gradient(faults):
    """Cavities that did not fault keep their gradient through the trip."""
    _, out = faults
    single = ~(out["fault"] == code("Multi Cav turn off"))
    g = out["waveform"][single][:, [0, 7], 0]
    assert np.abs(g[..., 600:] / g[..., :100].mean(-1, keepdims=True) - 1).max() < 0.1


def test_class_weights_choose_the_fault_mix():
    """Weights that name one fault type make every event that type."""
    sim = CryomoduleSimulator(SrfOptions(class_weights={"Quench_3ms": 1.0}))
    probabilities = sim.options.fault_probabilities()
    assert probabilities[code("Quench_3ms")] == 1.0
    assert probabilities.sum() == pytest.approx(1.0)
    uniform = SrfOptions().fault_probabilities()
    assert np.allclose(uniform, 1 / 8)


@pytest.mark.parametrize(
    "grid",
    [
        {"start": -409.5},
        {"start": -409.6, "samples": 1000, "decimation": 8},
        {"decimation": 0},
    ],
)
def test_bad_record_grids_are_refused(grid):
    """A window off the recorder's grid or past the record's end is an error."""
    with pytest.raises(ValidationError):
        RecordGrid(**grid)


def test_bad_class_weights_are_refused():
    """Unknown fault names and negative weights are configuration errors."""
    with pytest.raises(ValidationError):
        SrfOptions(class_weights={"Quench": 1.0})
    with pytest.raises(ValidationError):
        SrfOptions(class_weights={"Quench_3ms": -1.0})


def test_missing_setting_is_a_simulation_error():
    """A call without every setting names the missing ones."""
    sim = CryomoduleSimulator()
    values = settings(2)
    del values["beam_current"]
    with pytest.raises(SimulationError, match="beam_current"):
        sim.simulate(values, np.random.default_rng(SEED))
