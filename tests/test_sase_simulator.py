"""The SASE pulse simulator: 1-D FEL scalings and linear-regime statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from wakefield import registry
from wakefield.errors import PhysicsWarning, SimulationError
from wakefield.services.fel_gan import fidelity
from wakefield.services.simulators.sase import SaseOptions, SasePulseSimulator

SEED = 20261203
LINEAR = SaseOptions(saturation=False, time_window=24e-15, n_time=1024)


def settings(n: int, **values: float) -> dict[str, np.ndarray]:
    """``n`` samples of the default settings, with some changed."""
    defaults = {
        "peak_current": 3000.0,
        "bunch_length": 2e-15,
        "energy_spread": 1e-4,
        "undulator_length": 30.0,
    }
    defaults.update(values)
    return {name: np.full(n, value) for name, value in defaults.items()}


def shots(sim: SasePulseSimulator, n: int, seed: int = SEED, **values: float):
    return sim.simulate(settings(n, **values), np.random.default_rng(seed)).outputs


def test_registered_as_sase() -> None:
    """The simulator is found through the wakefield.simulators entry point."""
    assert registry.load_simulator("sase") is SasePulseSimulator


def test_declared_outputs_match_simulated_arrays() -> None:
    """Every declared output comes back with the declared shape and dtype."""
    sim = SasePulseSimulator(LINEAR)
    out = shots(sim, 3)
    coords = sim.coordinates()
    for output in sim.outputs():
        array = out[output.name]
        assert array.shape == (3, *output.shape)
        assert array.dtype == np.dtype(output.dtype)
        for dim, size in zip(output.dims, output.shape, strict=True):
            assert coords[dim].values.shape == (size,)


def test_lcls_like_defaults_give_hard_x_rays_and_known_scales() -> None:
    """Defaults give 1.5 Angstrom light, rho ~ 6e-4 and a 1-D gain length ~ 2.4 m."""
    sim = SasePulseSimulator()
    assert sim.wavelength == pytest.approx(1.5e-10, rel=1e-3)
    rho = float(sim.pierce_parameter(3000.0))
    assert 4e-4 < rho < 8e-4
    assert float(sim.gain_length(rho, 0.0)) == pytest.approx(
        0.03 / (4 * math.pi * math.sqrt(3) * rho)
    )
    # rho scales as the cube root of the current.
    assert float(sim.pierce_parameter(8 * 3000.0)) == pytest.approx(2 * rho)


def test_pulse_energy_follows_gamma_distribution_with_predicted_modes() -> None:
    """Linear-regime pulse energies are gamma distributed with M = 1/sigma_W^2."""
    out = shots(SasePulseSimulator(LINEAR), 4000)
    energy = out["pulse_energy"]
    predicted = out["mode_count"][0]

    fitted = fidelity.modes(energy)
    assert fitted == pytest.approx(predicted, rel=0.06)
    gamma = stats.gamma(a=predicted, scale=energy.mean() / predicted)
    assert stats.kstest(energy, gamma.cdf).pvalue > 0.01


def test_modes_are_pulse_length_over_coherence_time() -> None:
    """For a flat-top bunch, M is the pulse length over the coherence time."""
    options = LINEAR.model_copy(update={"profile": "flattop"})
    out = shots(SasePulseSimulator(options), 2000, bunch_length=3e-15)
    length = math.sqrt(12) * 3e-15
    expected = length / out["coherence_time"][0]

    assert out["mode_count"][0] == pytest.approx(expected, rel=0.05)
    assert fidelity.modes(out["pulse_energy"]) == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("length", [15.0, 45.0])
def test_intensity_correlation_gives_the_coherence_time(length: float) -> None:
    """The g2 coherence time of the shots equals sqrt(pi) / sigma_omega."""
    sim = SasePulseSimulator(LINEAR)
    out = shots(sim, 1500, undulator_length=length, bunch_length=3e-15)
    measured = fidelity.coherence_time(out["power"], sim.dt)
    assert measured == pytest.approx(out["coherence_time"][0], rel=0.05)


def test_spike_width_scales_with_coherence_time() -> None:
    """Spikes widen with the coherence time as the gain bandwidth narrows."""
    sim = SasePulseSimulator(LINEAR)
    short = shots(sim, 800, undulator_length=15.0, bunch_length=3e-15)
    long = shots(sim, 800, undulator_length=45.0, bunch_length=3e-15)
    width_short = fidelity.spikes(short["power"], sim.dt)[1].mean()
    width_long = fidelity.spikes(long["power"], sim.dt)[1].mean()
    tau_short, tau_long = short["coherence_time"][0], long["coherence_time"][0]

    assert tau_long / tau_short == pytest.approx(math.sqrt(3), rel=1e-6)
    assert width_long / width_short == pytest.approx(tau_long / tau_short, rel=0.05)
    # A spike's FWHM is close to one coherence time.
    assert 0.7 < width_short / tau_short < 1.1


def test_spectral_width_is_the_gain_bandwidth() -> None:
    """The mean spectrum's rms width is hbar sigma_omega of the gain bandwidth."""
    sim = SasePulseSimulator(LINEAR)
    out = shots(sim, 500, bunch_length=4e-15)
    width = fidelity.spectral_width(out["spectrum"], sim.photon_energy)
    sigma_omega = math.sqrt(math.pi) / out["coherence_time"][0]
    # The finite pulse length adds its own transform-limited width in quadrature.
    assert width == pytest.approx(6.582119569e-16 * sigma_omega, rel=0.05)
    step = sim.photon_energy[1] - sim.photon_energy[0]
    energy = out["spectrum"].sum(axis=1) * step
    np.testing.assert_allclose(energy, out["pulse_energy"], rtol=1e-4)


def test_energy_grows_exponentially_along_the_undulator() -> None:
    """Mean energy grows as exp(z / L_g) sqrt(z1 / z2) for a uniform current."""
    sim = SasePulseSimulator(LINEAR.model_copy(update={"profile": "flattop"}))
    low = shots(sim, 1000, undulator_length=20.0)
    high = shots(sim, 1000, undulator_length=30.0)
    gain_length = low["gain_length"][0]
    expected = math.exp(10.0 / gain_length) * math.sqrt(20.0 / 30.0)
    ratio = high["pulse_energy"].mean() / low["pulse_energy"].mean()
    assert ratio == pytest.approx(expected, rel=0.05)


def test_higher_current_and_lower_energy_spread_give_more_energy() -> None:
    """Pulse energy rises with the peak current and falls with energy spread."""
    sim = SasePulseSimulator(LINEAR)
    energies = [
        shots(sim, 300, peak_current=current, energy_spread=spread)["pulse_energy"]
        for current, spread in [(1500.0, 1e-4), (3000.0, 1e-4), (3000.0, 3e-4)]
    ]
    low_current, nominal, large_spread = (e.mean() for e in energies)
    assert nominal > 10 * low_current
    assert large_spread < nominal / 3


def test_energy_spread_lengthens_the_gain_length() -> None:
    """L_g grows by 1 + (sigma_E / rho)^2, Xie's 1-D energy-spread term."""
    sim = SasePulseSimulator()
    rho = float(sim.pierce_parameter(3000.0))
    cold = float(sim.gain_length(rho, 0.0))
    assert float(sim.gain_length(rho, rho / 2)) == pytest.approx(1.25 * cold)


def test_saturation_reduces_fluctuations_and_warns_when_deep() -> None:
    """Saturated pulses fluctuate less; deep saturation warns about the model."""
    deep = {"peak_current": 4000.0, "undulator_length": 45.0}
    options = LINEAR.model_copy(update={"saturation": True})
    with pytest.warns(PhysicsWarning, match="deep in saturation"):
        linear = shots(SasePulseSimulator(LINEAR), 600, **deep)
        saturated = shots(SasePulseSimulator(options), 600, **deep)
    assert fidelity.modes(saturated["pulse_energy"]) > 2 * fidelity.modes(
        linear["pulse_energy"]
    )
    p_sat = SasePulseSimulator(options).saturation_power(4000.0)
    assert saturated["power"].max() <= p_sat * 1.0001


def test_same_seed_gives_same_shots() -> None:
    """The rng passed in is the only source of randomness."""
    sim = SasePulseSimulator(LINEAR)
    first, again = shots(sim, 20, seed=7), shots(sim, 20, seed=7)
    other = shots(sim, 20, seed=8)
    np.testing.assert_array_equal(first["power"], again["power"])
    assert not np.array_equal(first["power"], other["power"])


def test_current_profile_input_matches_parametrised_profile() -> None:
    """A current array on the simulator's grid gives the parametrised shots."""
    sim = SasePulseSimulator(LINEAR)
    values = settings(10)
    current = sim.current_profiles(values["peak_current"], values["bunch_length"])
    from_array = sim.simulate_current(
        sim.time, current, 1e-4, 30.0, np.random.default_rng(3)
    ).outputs
    parametrised = sim.simulate(values, np.random.default_rng(3)).outputs
    np.testing.assert_allclose(
        from_array["pulse_energy"], parametrised["pulse_energy"], rtol=1e-5
    )


def test_bad_settings_fail_those_samples_only() -> None:
    """A negative current fails its sample with a reason; others are computed."""
    sim = SasePulseSimulator(LINEAR)
    values = settings(3)
    values["peak_current"][1] = -5.0
    batch = sim.simulate(values, np.random.default_rng(0))
    assert list(batch.failures) == [1]
    assert "peak_current" in batch.failures[1]
    assert np.isnan(batch.outputs["pulse_energy"][1])
    assert np.isfinite(batch.outputs["pulse_energy"][[0, 2]]).all()


def test_missing_setting_is_an_error() -> None:
    """Leaving out a setting raises SimulationError naming it."""
    values = settings(2)
    del values["energy_spread"]
    with pytest.raises(SimulationError, match="energy_spread"):
        SasePulseSimulator().simulate(values, np.random.default_rng(0))


def test_pulse_cut_by_the_window_warns() -> None:
    """A bunch longer than the time window raises a PhysicsWarning."""
    sim = SasePulseSimulator(SaseOptions(time_window=5e-15, n_time=128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shots(sim, 2)
    with pytest.warns(PhysicsWarning, match="cut by the time window"):
        shots(sim, 2, bunch_length=3e-15)
