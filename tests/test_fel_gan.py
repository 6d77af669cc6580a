"""The FEL pulse GAN: fidelity checks, a tiny training run, save and load."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import xarray as xr

from wakefield.errors import DatastoreError, ExtrapolationWarning, SpecError
from wakefield.services.fel_gan import fidelity, plots, training
from wakefield.services.fel_gan.model import FelGan, fit_scale, monomials
from wakefield.services.simulators.sase import SaseOptions, SasePulseSimulator

SEED = 20261203
NAMES = ("peak_current", "bunch_length", "energy_spread")
UNITS = ("A", "s", "")
# A small grid: 64 samples of 0.0625 fs, pulses of a few modes.
OPTIONS = SaseOptions(time_window=4e-15, n_time=64)
# A half fraction of the 2^3 design: every condition takes two values.
CONDITIONS = [
    {"peak_current": current, "bunch_length": length, "energy_spread": spread}
    for current, length, spread in [
        (2500.0, 0.5e-15, 0.5e-4),
        (2500.0, 0.7e-15, 1.5e-4),
        (3500.0, 0.5e-15, 1.5e-4),
        (3500.0, 0.7e-15, 0.5e-4),
    ]
]


class SimulatorSampler:
    """The simulator itself as a pulse sampler: a perfectly faithful generator."""

    def __init__(self) -> None:
        self.sim = SasePulseSimulator(OPTIONS)

    def sample_pulses(
        self, condition: Mapping[str, float], n: int, *, seed: int
    ) -> fidelity.Pulses:
        out = simulate([condition], n, seed)[1]
        return fidelity.Pulses(
            out["power"], self.sim.dt, out["spectrum"], self.sim.photon_energy
        )

    def sample_power(
        self, condition: Mapping[str, float], n: int, *, seed: int
    ) -> np.ndarray:
        return self.sample_pulses(condition, n, seed=seed).power


def simulate(
    conditions: list[dict[str, float]], n: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``n`` shots at each condition: settings and outputs."""
    sim = SasePulseSimulator(OPTIONS)
    settings = {name: np.repeat([c[name] for c in conditions], n) for name in NAMES}
    settings["undulator_length"] = np.full(n * len(conditions), 30.0)
    return settings, sim.simulate(settings, np.random.default_rng(seed)).outputs


def dataset(n: int, seed: int = SEED) -> training.PulseDataset:
    sim = SasePulseSimulator(OPTIONS)
    settings, outputs = simulate(CONDITIONS, n, seed)
    return training.PulseDataset.from_outputs(
        outputs,
        settings,
        names=NAMES,
        units=UNITS,
        dt=sim.dt,
        photon_energy=float(sim.photon_energy[OPTIONS.n_time // 2]),
    )


def held_out(condition: dict[str, float], n: int) -> fidelity.Pulses:
    return SimulatorSampler().sample_pulses(condition, n, seed=SEED + 1)


def tiny_config(epochs: int) -> training.TrainingConfig:
    return training.TrainingConfig(
        epochs=epochs,
        batch_size=32,
        critic_steps=2,
        learning_rate=1e-3,
        critic_width=4,
        seed=3,
        threads=1,
    )


# -- the statistics ----------------------------------------------------------


def test_modes_of_gamma_samples() -> None:
    """M = <W>^2 / var W recovers the shape of gamma-distributed energies."""
    energies = np.random.default_rng(SEED).gamma(7.0, 1e-6, size=20_000)
    assert fidelity.modes(energies) == pytest.approx(7.0, rel=0.03)


def test_spikes_of_a_known_profile() -> None:
    """Three separated Gaussian spikes are counted with their FWHM."""
    dt = 1e-17
    t = np.arange(400) * dt
    sigma = 5 * dt
    centres = (100 * dt, 200 * dt, 300 * dt)
    profile = sum(np.exp(-0.5 * ((t - c) / sigma) ** 2) for c in centres)
    counts, widths = fidelity.spikes(profile[None, :], dt)
    assert counts.tolist() == [3]
    np.testing.assert_allclose(widths, 2 * np.sqrt(2 * np.log(2)) * sigma, rtol=0.02)


def test_diversity_is_zero_for_identical_shots() -> None:
    """Identical shots have diversity 0; independent SASE shots far more."""
    pulses = held_out(CONDITIONS[0], 32)
    same = np.repeat(pulses.power[:1], 32, axis=0)
    assert fidelity.diversity(same) == 0.0
    assert fidelity.diversity(pulses.power) > 0.3


def test_simulated_pulses_pass_against_simulated_pulses() -> None:
    """A perfectly faithful sampler (the simulator, another seed) is accepted."""
    sampler = SimulatorSampler()
    reports = []
    for condition in CONDITIONS[:2]:
        simulated = held_out(condition, 4000)
        generated = sampler.sample_pulses(condition, 4000, seed=99)
        ratio = fidelity.fixed_noise_diversity(sampler, condition, simulated)
        reports.append(
            fidelity.compare(condition, simulated, generated, diversity_ratio=ratio)
        )
    # M of two sets of 4000 shots with M ~ 4 scatter by about 4 % rms.
    result = fidelity.verdict(reports, fidelity.FidelityThresholds(modes=0.12))
    assert result.accepted, result.reasons
    assert not result.collapsed


def test_verdict_keeps_back_a_collapsed_generator() -> None:
    """A generator that ignores its noise is flagged collapsed and kept back."""
    gan = training.train(dataset(100), tiny_config(epochs=1))
    # Collapse: every shot is drawn from the first shot's noise.
    draw = gan.generator.forward
    gan.generator.forward = lambda z, c: draw(z[:1].expand_as(z), c)  # type: ignore[method-assign]
    condition = CONDITIONS[0]
    simulated = held_out(condition, 500)
    generated = gan.sample_pulses(condition, 500, seed=1)
    assert np.ptp(generated.energies) == pytest.approx(
        0.0, abs=1e-12 * generated.energies.max()
    )

    ratio = fidelity.fixed_noise_diversity(gan, condition, simulated)
    report = fidelity.compare(condition, simulated, generated, diversity_ratio=ratio)
    result = fidelity.verdict([report])
    assert ratio < 0.01
    assert not result.accepted
    assert result.collapsed
    assert any("collapsed" in reason for reason in result.reasons)


def test_verdict_without_reports_refuses() -> None:
    """No tested condition means no acceptance."""
    assert not fidelity.verdict([]).accepted


# -- training ----------------------------------------------------------------


def test_tiny_training_moves_the_statistics_towards_simulation() -> None:
    """A short run brings mean profile and energy distribution closer to truth."""
    data = dataset(300)
    condition = CONDITIONS[3]
    simulated = held_out(condition, 1000)

    def report(gan: FelGan) -> fidelity.ConditionReport:
        generated = gan.sample_pulses(condition, 1000, seed=5)
        return fidelity.compare(condition, simulated, generated)

    history: list[dict[str, float]] = []
    before = report(training.train(data, tiny_config(epochs=0)))
    after = report(
        training.train(data, tiny_config(epochs=8), lambda e, m: history.append(m))
    )
    assert len(history) == 8
    assert all(np.isfinite(m["wasserstein"]) for m in history)
    assert after.profile_distance < 0.5 * before.profile_distance
    assert after.energy_wasserstein < 0.5 * before.energy_wasserstein
    assert after.relative("spike_count") < 0.5 * before.relative("spike_count")


def test_save_and_load_give_identical_samples(tmp_path) -> None:
    """A saved generator loads back and draws the very same shots for a seed."""
    gan = training.train(dataset(50), tiny_config(epochs=1))
    training.save(gan, tmp_path / "gen")
    loaded = training.load(tmp_path / "gen")
    assert loaded.config == gan.config
    first = gan.sample_field([list(CONDITIONS[1].values())] * 8, seed=11)
    again = loaded.sample_field([list(CONDITIONS[1].values())] * 8, seed=11)
    np.testing.assert_array_equal(first, again)


def test_the_scale_fit_passes_through_every_condition_of_a_grid() -> None:
    """On a grid of three levels per condition the tensor-product fit of the
    log mean power reproduces every grid point, whatever the values."""
    levels = torch.tensor([-1.0, 0.0, 1.0])
    grid = torch.cartesian_prod(levels, levels, levels)
    power = torch.exp(
        torch.randn(len(grid), generator=torch.Generator().manual_seed(4))
    )
    terms, coefficients = fit_scale(grid, power)
    assert len(terms) == 27
    fitted = monomials(grid, terms).double() @ torch.tensor(coefficients).double()
    torch.testing.assert_close(fitted, torch.log(power.double()), rtol=0, atol=1e-6)

    # A condition at two levels only enters linearly: its square is the constant.
    two = grid[grid[:, 2] != 0]
    assert [2, 2] not in fit_scale(two, power[grid[:, 2] != 0])[0]


def test_the_generator_is_linear_in_its_noise() -> None:
    """Without saturation the field is a linear function of the shot noise,
    so it is a Gaussian process, as a linear-regime SASE field is."""
    gan = training.train(dataset(50), tiny_config(epochs=1))
    net = gan.generator
    c = torch.zeros(4, len(NAMES))
    z1, z2 = (net.noise(4, torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.no_grad():
        combined = net(2 * z1 - 3 * z2, c)
        parts = 2 * net(z1, c) - 3 * net(z2, c)
    torch.testing.assert_close(combined, parts, rtol=1e-4, atol=1e-5)


def test_a_generator_with_saturation_trains_and_reloads(tmp_path) -> None:
    """The saturation gain starts at zero (the generator starts linear), is
    trained, and is kept with the generator."""
    config = tiny_config(epochs=0).model_copy(update={"saturation": True})
    untrained = training.train(dataset(50), config)
    assert untrained.generator.saturation is not None
    z = untrained.generator.noise(4, torch.Generator().manual_seed(1))
    c = torch.zeros(4, len(NAMES))
    with torch.no_grad():
        torch.testing.assert_close(
            untrained.generator(2 * z, c), 2 * untrained.generator(z, c)
        )

    config = config.model_copy(update={"epochs": 2})
    gan = training.train(dataset(50), config)
    last = gan.generator.saturation[-1].weight
    assert float(last.detach().abs().max()) > 0
    training.save(gan, tmp_path / "gen")
    loaded = training.load(tmp_path / "gen")
    assert loaded.config.saturation
    row = [list(CONDITIONS[0].values())] * 4
    np.testing.assert_array_equal(
        gan.sample_field(row, seed=5), loaded.sample_field(row, seed=5)
    )


def test_load_from_an_empty_folder_is_a_datastore_error(tmp_path) -> None:
    """Loading where nothing was saved says which file is missing."""
    with pytest.raises(DatastoreError, match="config.json"):
        training.load(tmp_path)


def test_dataset_refuses_non_finite_fields() -> None:
    """Failed (NaN) shots must be dropped before training."""
    good = dataset(2)
    field = good.field.copy()
    field[0, 0] = np.nan
    with pytest.raises(SpecError, match="non-finite"):
        training.PulseDataset(
            good.conditions, field, good.dt, good.photon_energy, NAMES, UNITS
        )


def test_dataset_from_a_scan_dataset() -> None:
    """A sase scan as an xarray Dataset becomes a training set with units."""
    sim = SasePulseSimulator(OPTIONS)
    settings, outputs = simulate(CONDITIONS[:2], 3, SEED)
    variables = {
        name: (("sample", "time"), outputs[name])
        for name in ("field_real", "field_imag")
    }
    for name, unit in zip(NAMES, UNITS, strict=True):
        variables[name] = xr.Variable(("sample",), settings[name], {"units": unit})
    scan = xr.Dataset(
        variables, coords={"time": sim.time, "photon_energy": sim.photon_energy}
    )
    data = training.PulseDataset.from_xarray(scan, NAMES)
    assert data.field.shape == (6, OPTIONS.n_time)
    assert data.units == UNITS
    assert data.dt == pytest.approx(sim.dt)
    assert data.photon_energy == pytest.approx(sim.photon_energy[OPTIONS.n_time // 2])
    with pytest.raises(DatastoreError, match="field_real"):
        training.PulseDataset.from_xarray(scan.drop_vars("field_real"), NAMES)


def test_conditions_outside_training_warn() -> None:
    """Sampling outside the trained condition ranges is an extrapolation."""
    gan = training.train(dataset(20), tiny_config(epochs=1))
    condition = dict(CONDITIONS[0], peak_current=6000.0)
    with pytest.warns(ExtrapolationWarning, match="peak_current"):
        gan.sample_pulses(condition, 2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gan.sample_pulses(CONDITIONS[0], 2, seed=0)


def test_plots_are_written(tmp_path) -> None:
    """The comparison plots are written as PNG files."""
    simulated = held_out(CONDITIONS[0], 200)
    generated = held_out(CONDITIONS[1], 200)
    paths = [
        plots.plot_pulses(simulated, generated, tmp_path / "pulses.png"),
        plots.plot_distributions(simulated, generated, tmp_path / "dist.png"),
        plots.plot_learning_curve(
            [{"epoch": 1, "wasserstein": 2.0, "gradient_penalty": 0.1}],
            tmp_path / "curve.png",
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
