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


TIMES = RecordGrid().times
"""The default record's time axis, ms: 0.8 ms apart, 0.2 ms within +-12.8 ms."""


def between(low: float, high: float) -> np.ndarray:
    """Mask of the default record's samples from ``low`` to ``high`` ms."""
    return (TIMES >= low) & (TIMES < high)


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
    t = coords["time"].values
    assert t.shape == (sim.options.grid.size,) == (736,)
    assert list(coords["signal"].values) == list(SIGNALS)
    steps = np.diff(t)
    inside = (t[:-1] >= -12.8) & (t[1:] <= 12.8)
    assert np.allclose(steps[inside], 0.2) and np.allclose(steps[~inside], 0.8)


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
    on_lattice = np.isclose((t - t[0]) / 0.8, np.round((t - t[0]) / 0.8))
    lead = (t > -200) & (t < -2) & on_lattice  # evenly spaced, 0.8 ms apart
    last = (t > -60) & (t < -2)
    for e in np.flatnonzero(out["fault"] == code("Microphonics")):
        d = signal(out, e, 2, "DETA2")[lead]
        others = [signal(out, e, c, "DETA2")[last].std() for c in (0, 5, 7)]
        assert signal(out, e, 2, "DETA2")[last].std() > 3.0 * max(others)
        spectrum = np.abs(np.fft.rfft((d - d.mean()) * np.hanning(d.size)))
        freq = np.fft.rfftfreq(d.size, 0.8e-3)[spectrum[1:].argmax() + 1]
        assert 5.0 <= freq <= 55.0


def test_heat_riser_choke_detunes_and_raises_power(faults):
    """A choked heat riser holds the cavity far off tune, at more forward power."""
    _, out = faults
    late = between(-14.0, -4.0)
    for e in np.flatnonzero(out["fault"] == code("Heat Riser Choke")):
        assert abs(signal(out, e, 2, "DETA2")[late].mean()) > 30.0
        # Forward power per gradient squared grows as 1 + tan^2(detune angle).
        g, p = out["waveform"][e][:, 0][:, late], out["waveform"][e][:, 2][:, late]
        per_gradient = p.mean(axis=1) / (g.mean(axis=1) ** 2)
        others = np.delete(per_gradient, 2)
        assert per_gradient[2] > 1.3 * np.median(others)


def test_quench_100ms_climbs_in_forward_power(faults):
    """Before a slow quench trips, the controller raises the forward power."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("Quench_100ms")):
        p = signal(out, e, 2, "CRFP")
        assert p[between(-25.0, -1.6)].mean() > 1.3 * p[TIMES < -250.0].mean()


def test_multi_cav_turn_off_empties_several_cavities(faults):
    """Multi Cav turn off leaves at least two cavities without gradient."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("Multi Cav turn off")):
        g = out["waveform"][e, :, 0]
        left = g[:, between(30.0, 40.0)].mean(axis=1) / g[:, TIMES < -330].mean(axis=1)
        assert (left < 0.2).sum() >= 2
        assert ((left < 0.2) == out["faulted"][e]).all()


def test_healthy_cavities_hold_their_gradient(faults):
    """Cavities that did not fault keep their gradient through the trip."""
    _, out = faults
    single = ~(out["fault"] == code("Multi Cav turn off"))
    g = out["waveform"][single][:, [0, 7], 0]
    base = g[..., TIMES < -330].mean(-1, keepdims=True)
    assert np.abs(g[..., TIMES >= 70.0] / base - 1).max() < 0.1


@pytest.fixture(scope="module")
def drive_faults() -> dict[str, np.ndarray]:
    """Nine Controls Faults and six Single Cav Turn offs, in cavity 5 (index 4)."""
    sim = CryomoduleSimulator(SrfOptions(signals=SIGNALS))
    kinds = np.array([code("Controls Fault")] * 9 + [code("Single Cav Turn off")] * 6)
    batch = sim.simulate_faults(
        settings(kinds.size, noise_level=1.0),
        kinds,
        np.full(kinds.size, 4),
        np.random.default_rng(SEED + 2),
    )
    return batch.outputs


def fall(g: np.ndarray, level: float = 0.95) -> float:
    """First time after -100 ms that the gradient is below ``level`` of baseline."""
    base = g[TIMES < -100].mean()
    return float(TIMES[np.argmax((g < level * base) & (TIMES > -100))])


def test_controls_fault_moves_the_drive_before_the_gradient(drive_faults):
    """In a Controls Fault the controller's drive departs from its baseline, or
    goes quiet (a frozen output), before the gradient falls."""
    out = drive_faults
    for e in np.flatnonzero(out["fault"] == code("Controls Fault")):
        g, ask = signal(out, e, 4, "GMES"), signal(out, e, 4, "GASK")
        t_fall = fall(g)
        base = ask[TIMES < -100]
        before = ask[between(t_fall - 10.0, t_fall)]
        departed = np.abs(before / base.mean() - 1.0).max() > 0.15
        quiet = ask[between(t_fall - 5.0, t_fall)].std() < 0.3 * base.std()
        assert departed or quiet, f"event {e}: the drive did nothing before the fall"


def test_rf_turn_off_removes_forward_power_first(drive_faults):
    """With Single Cav Turn off the forward power is gone before the gradient
    falls, and the controller's drive rises rather than falls."""
    out = drive_faults
    for e in np.flatnonzero(out["fault"] == code("Single Cav Turn off")):
        g = signal(out, e, 4, "GMES")
        power, ask = signal(out, e, 4, "CRFP"), signal(out, e, 4, "GASK")
        t_fall = fall(g)
        off = float(TIMES[np.argmax(power < 0.2 * power[TIMES < -100].mean())])
        assert off <= t_fall
        after = ask[between(t_fall, t_fall + 1.0)].mean()
        assert after > 1.05 * ask[TIMES < -100].mean()


def test_e_quench_falls_in_a_knee_then_decays_freely(faults):
    """An E_Quench gradient falls by a further tenth within 0.4 ms of passing
    90 %, then what is left decays slowly; a Quench_3ms gradient is nearly
    gone 3 ms after 90 %."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("E_Quench")):
        g = signal(out, e, 2, "GMES")
        base = g[TIMES < -100].mean()
        t90 = fall(g, 0.9)
        assert g[between(t90 + 0.4, t90 + 0.6)].mean() < 0.8 * base
        assert g[between(t90 + 3.0, t90 + 3.2)].mean() > 0.15 * base
    for e in np.flatnonzero(out["fault"] == code("Quench_3ms")):
        g = signal(out, e, 2, "GMES")
        t90 = fall(g, 0.9)
        assert g[between(t90 + 3.0, t90 + 3.2)].mean() < 0.15 * g[TIMES < -100].mean()


def test_static_detuning_stays_within_the_tuner_deadband():
    """However large the detune spread, the tuners keep every healthy cavity's
    detune angle within their deadband (27 deg) plus microphonics."""
    sim = CryomoduleSimulator(SrfOptions(signals=SIGNALS))
    n = 16
    batch = sim.simulate_faults(
        settings(n, detune_spread=10.0, microphonics=0.5, noise_level=0.5),
        np.full(n, code("Single Cav Turn off")),
        np.zeros(n, dtype=np.int64),
        np.random.default_rng(SEED + 3),
    )
    deta = batch.outputs["waveform"][:, 1:, SIGNALS.index("DETA2")]
    assert np.abs(deta[..., TIMES < -100].mean(axis=-1)).max() < 27.0 + 5.0


def test_heat_riser_choke_is_still_detuning_at_the_trip(faults):
    """The trip of a choked heat riser comes while the detuning still grows."""
    _, out = faults
    for e in np.flatnonzero(out["fault"] == code("Heat Riser Choke")):
        d = signal(out, e, 2, "DETA2")
        late, earlier = d[between(-14.0, -4.0)].mean(), d[between(-64.0, -54.0)].mean()
        assert abs(late) > abs(earlier) + 3.0


def test_full_rate_window_is_optional():
    """zoom: 0 keeps the 640 decimated samples only; a zoom off the recorder's
    0.2 ms steps is refused."""
    grid = RecordGrid(zoom=0.0)
    assert grid.size == 640 and np.allclose(np.diff(grid.times), 0.8)
    with pytest.raises(ValidationError, match="zoom"):
        RecordGrid(zoom=12.7)


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
