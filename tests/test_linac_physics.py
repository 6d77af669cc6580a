"""Physics of the built-in ``linac`` simulator (Cheetah, small bunches)."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from wakefield import registry
from wakefield.errors import PhysicsWarning, SimulationError
from wakefield.services.simulators import beam_diagnostics as diagnostics
from wakefield.services.simulators.linac import (
    LCLS,
    LinacModel,
    LinacOptions,
    LinacSimulator,
)
from wakefield.simulator import Batch

needs_cheetah = pytest.mark.skipif(
    find_spec("cheetah") is None,
    reason="cheetah-accelerator is not installed (pip install wakefield[linac])",
)

_PACKAGE = "wakefield.services.simulators"
N_PARTICLES = 2000
NOMINAL = {
    "l1_phase": LCLS.l1_phase,
    "l2_phase": LCLS.l2_phase,
    "l3_phase": LCLS.l3_phase,
    "l1_voltage": 100.0,
    "l2_voltage": 100.0,
    "l3_voltage": 100.0,
}


def _run(sim: LinacSimulator, **changes: list[float]) -> Batch:
    """Simulate samples that differ from nominal only in ``changes``."""
    n = max((len(v) for v in changes.values()), default=1)
    settings = {k: np.full(n, v) for k, v in NOMINAL.items()}
    settings.update({k: np.asarray(v, dtype=float) for k, v in changes.items()})
    return sim.simulate(settings, np.random.default_rng(0))


def _tensors(model: LinacModel, phases: np.ndarray) -> tuple[dict, dict]:
    """Cheetah phases and nominal voltages for L1 phases ``phases`` (deg)."""
    n = len(phases)
    phase = {
        "l1": torch.tensor(-phases, dtype=torch.float64),
        "l2": torch.full((n,), -LCLS.l2_phase, dtype=torch.float64),
        "l3": torch.full((n,), -LCLS.l3_phase, dtype=torch.float64),
    }
    voltage = {
        k: torch.full((n,), v, dtype=torch.float64)
        for k, v in model.nominal_voltage.items()
    }
    return phase, voltage


@pytest.fixture(scope="module")
def sim() -> LinacSimulator:
    return LinacSimulator(LinacOptions(n_particles=N_PARTICLES))


@pytest.fixture(scope="module")
def nominal(sim: LinacSimulator) -> Batch:
    return _run(sim)


@needs_cheetah
def test_nominal_machine_reaches_published_energies(
    sim: LinacSimulator, nominal: Batch
) -> None:
    """At nominal settings the beam reaches 250 MeV, 4.3 GeV and 13.6 GeV."""
    out = nominal.outputs
    assert nominal.failures == {}
    assert out["bc1_energy"][0] == pytest.approx(250e6, rel=0.02)
    assert out["bc2_energy"][0] == pytest.approx(4.3e9, rel=0.02)
    assert out["energy"][0] == pytest.approx(13.6e9, rel=0.02)

    model = sim.model
    assert float(model.design_chicane_map("bc1").r56) == pytest.approx(-45e-3)
    assert float(model.design_chicane_map("bc2").r56) == pytest.approx(-24.7e-3)
    assert 5e6 < model.l1x_voltage < 25e6


@needs_cheetah
def test_cavity_energy_gain_follows_v_cos_phase(sim: LinacSimulator) -> None:
    """The energy after L1 is E0 + V1 cos(phase) + VX cos(phase_X)."""
    model = sim.model
    phases = np.array([-40.0, -25.1, 0.0, 30.0, 60.0, 85.0])
    percent = np.array([50.0, 100.0, 110.0, 75.0, 100.0, 60.0])
    phase, voltage = _tensors(model, phases)
    voltage["l1"] = voltage["l1"] * torch.tensor(percent / 100)
    l1 = dict(model.sections(phase, voltage))["l1"]
    beam = l1.track(model.injector_beam())

    v1 = model.nominal_voltage["l1"] * percent / 100
    l1x = model.l1x_voltage * math.cos(math.radians(LCLS.l1x_phase))
    expected = LCLS.injector_energy + v1 * np.cos(np.radians(phases)) + l1x
    np.testing.assert_allclose(beam.energy.numpy(), expected, rtol=1e-12)

    # The bunch mean also feels the RF curvature: cos averages to
    # cos(phase) exp(-(k sigma_z)^2 / 2) over a Gaussian bunch.
    sigma_z = sim.options.bunch_length
    k1 = 2 * math.pi * LCLS.s_band_frequency / diagnostics.SPEED_OF_LIGHT
    kx = 2 * math.pi * LCLS.x_band_frequency / diagnostics.SPEED_OF_LIGHT
    damped = (
        LCLS.injector_energy
        + v1 * np.cos(np.radians(phases)) * math.exp(-((k1 * sigma_z) ** 2) / 2)
        + l1x * math.exp(-((kx * sigma_z) ** 2) / 2)
    )
    _, _, mean = diagnostics.longitudinal(
        beam.particles.double(), beam.energy.double(), model.mass
    )
    # Sampling noise of <cos> over 2000 particles is about 1e-4 of V1 sin(phase).
    np.testing.assert_allclose(mean.numpy(), damped, rtol=1e-4)


@needs_cheetah
def test_zero_voltage_cavity_behaves_as_a_drift(sim: LinacSimulator) -> None:
    """A cavity at zero voltage tracks like a drift of the same length."""
    model = sim.model
    ch, kw = model.cheetah, {"dtype": torch.float64}
    length = torch.tensor(LCLS.l1_length, **kw)
    cavity = ch.Cavity(
        length=length,
        voltage=torch.tensor(0.0, **kw),
        phase=torch.tensor(25.0, **kw),
        frequency=torch.tensor(LCLS.s_band_frequency, **kw),
        cavity_type="traveling_wave",
        **kw,
    )
    drift = ch.Drift(length=length, **kw)
    beam = model.injector_beam()
    through_cavity, through_drift = cavity.track(beam), drift.track(beam)

    assert float(through_cavity.energy) == LCLS.injector_energy
    a, b = through_cavity.particles, through_drift.particles
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-15)
    torch.testing.assert_close(a[:, 5], b[:, 5], rtol=0, atol=1e-15)
    # Cheetah's travelling-wave map leaves out the drift's path-length term
    # R56 = -L / gamma^2; tau may differ by that much and no more.
    gamma = LCLS.injector_energy / model.mass
    bound = LCLS.l1_length / gamma**2 * float(b[:, 5].abs().max())
    assert float((a[:, 4] - b[:, 4]).abs().max()) <= 1.01 * bound


@needs_cheetah
def test_phases_of_90_degrees_give_finite_results(sim: LinacSimulator) -> None:
    """Phases of exactly +-90 deg are tracked, finite, with a physics warning."""
    with pytest.warns(PhysicsWarning, match="zero crossing"):
        batch = _run(
            sim,
            l1_phase=[90.0, -90.0, -25.1, -25.1, -25.1, 90.0],
            l2_phase=[-41.4, -41.4, 90.0, -90.0, -41.4, -41.4],
            l3_phase=[0.0, 0.0, 0.0, 0.0, -90.0, -90.0],
            l1_voltage=[100.0, 100.0, 100.0, 100.0, 50.0, 50.0],
            l2_voltage=[100.0, 100.0, 100.0, 50.0, 100.0, 100.0],
        )
    assert batch.failures == {}
    for name, values in batch.outputs.items():
        assert np.all(np.isfinite(values)), name

    # No net gain in L1 beyond the guard's 0.2 % of the beam energy.
    l1x = sim.model.l1x_voltage * math.cos(math.radians(LCLS.l1x_phase))
    off_crest = LCLS.injector_energy + l1x
    assert batch.outputs["bc1_energy"][0] == pytest.approx(off_crest, rel=5e-3)


@needs_cheetah
def test_a_beam_decelerated_to_rest_is_a_failure(sim: LinacSimulator) -> None:
    """L2 at 90 deg chirps a 120 MeV beam by hundreds of MeV: it is lost."""
    with pytest.warns(PhysicsWarning):
        batch = _run(sim, l1_phase=[90.0, -25.1], l2_phase=[90.0, -41.4])
    assert set(batch.failures) == {0}
    assert batch.failures[0].startswith("beam lost: ")
    assert "decelerated to rest by BC2" in batch.failures[0]


@needs_cheetah
def test_bc1_bunch_length_follows_chirp_and_r56(sim: LinacSimulator) -> None:
    """After BC1, sigma_z is |1 + h R56| sigma_z0 for the chirp h from L1.

    Tolerance 3 %: the linear model leaves out BC1's T566, the RF curvature
    that L1X cancels only at the nominal phase, and the uncorrelated energy
    spread (R56 sigma_delta of about 2 um, added in quadrature).  Phases
    within about 3 deg of full compression (-30 deg) are left out, since
    there those terms set the bunch length.
    """
    model = sim.model
    phases = np.array([-20.0, -22.5, -25.1, -35.0, -37.5, -40.0])
    phase, voltage = _tensors(model, phases)
    sections = dict(model.sections(phase, voltage))
    before = sections["l1"].track(model.injector_beam())
    after = model.track_chicane(sections["bc1"], before)

    z0, delta0, _ = diagnostics.longitudinal(
        before.particles, before.energy, model.mass
    )
    z1, _, _ = diagnostics.longitudinal(after.particles, after.energy, model.mass)
    h = diagnostics.chirp(z0, delta0)
    r56 = float(model.design_chicane_map("bc1").r56)
    predicted = (1 + h * r56).abs() * z0.std(dim=-1, correction=0)

    measured = z1.std(dim=-1, correction=0)
    torch.testing.assert_close(measured, predicted, rtol=0.03, atol=0.0)
    # More chirp than full compression overcompresses: the sign flips.
    assert bool(((1 + h * r56) > 0).eq(torch.tensor(phases > -30)).all())


@needs_cheetah
def test_chicane_map_matches_cheetah_second_order_tracking(
    sim: LinacSimulator,
) -> None:
    """The composed BC1 map tracks like Cheetah's element-by-element second order."""
    model = sim.model
    phase, voltage = _tensors(model, np.array([-22.5, -25.1, -37.5]))
    sections = dict(model.sections(phase, voltage))
    before = sections["l1"].track(model.injector_beam())
    mine = model.track_chicane(sections["bc1"], before).particles
    cheetah = sections["bc1"].track(before).particles

    # They differ only at third order in delta (about 1e-2 here): well under
    # a micrometre in tau, while the bunch is 30 to 200 um long.
    assert float((mine - cheetah).abs().max()) < 1e-6
    torch.testing.assert_close(
        mine[..., 4].std(dim=-1), cheetah[..., 4].std(dim=-1), rtol=2e-3, atol=0
    )


@needs_cheetah
def test_same_seed_gives_same_outputs(sim: LinacSimulator, nominal: Batch) -> None:
    """The same options give identical outputs; another beam seed does not."""
    again = _run(LinacSimulator(LinacOptions(n_particles=N_PARTICLES)))
    for name, values in nominal.outputs.items():
        np.testing.assert_array_equal(again.outputs[name], values, err_msg=name)

    other = _run(LinacSimulator(LinacOptions(n_particles=N_PARTICLES, beam_seed=1)))
    assert other.outputs["peak_current"][0] != nominal.outputs["peak_current"][0]
    assert other.outputs["energy"][0] == pytest.approx(
        nominal.outputs["energy"][0], rel=1e-4
    )


@needs_cheetah
def test_sample_does_not_depend_on_its_batch(
    sim: LinacSimulator, nominal: Batch
) -> None:
    """A sample tracked among others gives what it gives alone."""
    batch = _run(
        sim,
        l1_phase=[-30.0, LCLS.l1_phase, -21.0],
        l2_phase=[-10.0, LCLS.l2_phase, -45.0],
        l3_voltage=[60.0, 100.0, 105.0],
    )
    for name, values in nominal.outputs.items():
        np.testing.assert_allclose(
            batch.outputs[name][1], values[0], rtol=1e-9, atol=1e-12, err_msg=name
        )


@needs_cheetah
def test_broken_samples_are_failures_not_crashes(sim: LinacSimulator) -> None:
    """NaN settings, zero voltage and a decelerating L2 fail alone, with reasons."""
    batch = _run(
        sim,
        l1_phase=[np.nan, -25.1, -25.1, -25.1],
        l2_voltage=[100.0, 0.0, 100.0, 100.0],
        l2_phase=[-41.4, -41.4, 180.0, -41.4],
    )
    assert set(batch.failures) == {0, 1, 2}
    assert "l1_phase is nan" in batch.failures[0]
    assert "l2_voltage must be positive" in batch.failures[1]
    assert "beam lost" in batch.failures[2] and "L2" in batch.failures[2]
    assert np.isfinite(batch.outputs["energy"][3])
    assert np.isnan(batch.outputs["energy"][:3]).all()


@needs_cheetah
def test_outputs_match_their_declarations(sim: LinacSimulator, nominal: Batch) -> None:
    """Every declared output comes back with its shape, and images add up."""
    coordinates = sim.coordinates()
    for output in sim.outputs():
        values = nominal.outputs[output.name]
        assert values.shape == (1, *output.shape), output.name
        assert values.dtype == np.dtype(output.dtype), output.name
        for dim, length in zip(output.dims, output.shape, strict=True):
            assert len(coordinates[dim].values) == length

    image = nominal.outputs["lps"][0]
    assert 0.9 < image.sum() <= 1.0 + 1e-6
    # The current profile carries the bunch charge that falls inside it.
    z = coordinates["current_z"].values
    charge = nominal.outputs["current_profile"][0].sum() * (z[1] - z[0])
    charge /= diagnostics.SPEED_OF_LIGHT
    assert charge == pytest.approx(sim.options.bunch_charge, rel=0.05)
    assert len(sim.outputs()) - 2 == 25


@needs_cheetah
def test_provenance_names_versions_and_hashes_the_lattice(
    sim: LinacSimulator,
) -> None:
    """Provenance carries versions, the lattice and a hash that matches it."""
    record = sim.provenance()
    assert record["simulator"] == "linac"
    assert record["cheetah"] and record["torch"] == torch.__version__
    text = json.dumps(record["lattice"], sort_keys=True, separators=(",", ":"))
    assert record["lattice_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    names = [e["name"] for e in record["lattice"]["elements"]]
    assert {"l1_rf", "l1x", "bc1_b1", "bc2_b4", "l3_rf10"} <= set(names)
    json.dumps(record)


def test_registered_as_linac_with_consistent_declarations() -> None:
    """The entry point loads it; every output's dimensions have coordinates."""
    assert registry.load_simulator("linac") is LinacSimulator
    sim = LinacSimulator()
    assert [s.name for s in sim.settings()] == list(NOMINAL)
    assert {s.name: s.default for s in sim.settings()} == NOMINAL
    names = [o.name for o in sim.outputs()]
    assert len(names) == len(set(names)) == 27
    coordinates = sim.coordinates()
    for output in sim.outputs():
        for dim, length in zip(output.dims, output.shape, strict=True):
            assert coordinates[dim].values.shape == (length,)


def test_module_imports_without_cheetah_and_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without Cheetah the module imports and simulate names the extra."""
    monkeypatch.setitem(sys.modules, "cheetah", None)  # import cheetah fails
    package = importlib.import_module(_PACKAGE)
    for leaf in ("linac", "linac_lattice", "beam_diagnostics"):
        monkeypatch.delitem(sys.modules, f"{_PACKAGE}.{leaf}", raising=False)
        monkeypatch.setattr(package, leaf, getattr(package, leaf, None), raising=False)
    fresh = importlib.import_module(f"{_PACKAGE}.linac")

    sim = fresh.LinacSimulator()
    assert len(sim.outputs()) == 27 and sim.coordinates()
    settings = {s.name: np.array([s.default]) for s in sim.settings()}
    with pytest.raises(SimulationError, match=r"pip install wakefield\[linac\]"):
        sim.simulate(settings, np.random.default_rng(0))
