"""Plots of generated against simulated SASE pulses, written as PNG.

Figures are made as ``matplotlib.figure.Figure`` objects and saved with
the Agg renderer, without pyplot's global state, so plotting is safe inside
services and threads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .fidelity import Pulses, SpikeCriteria, spikes

log = logging.getLogger(__name__)

SIMULATED = "tab:blue"
GENERATED = "tab:orange"


def plot_pulses(
    simulated: Pulses,
    generated: Pulses,
    path: str | Path,
    *,
    title: str = "",
    shots: int = 3,
) -> Path:
    """A few simulated and generated power profiles, their mean profiles and,
    when both carry them, their mean spectra."""
    with_spectra = simulated.spectrum is not None and generated.spectrum is not None
    fig = Figure(figsize=(11, 6.5 if with_spectra else 3.5), layout="constrained")
    rows = 2 if with_spectra else 1
    axes = fig.subplots(rows, 3, squeeze=False)
    t = np.arange(simulated.power.shape[1]) - simulated.power.shape[1] // 2
    t_fs = t * simulated.dt * 1e15

    for ax, pulses, colour, name in (
        (axes[0, 0], simulated, SIMULATED, "simulated"),
        (axes[0, 1], generated, GENERATED, "generated"),
    ):
        for i in range(min(shots, pulses.power.shape[0])):
            ax.plot(t_fs, pulses.power[i] / 1e9, color=colour, alpha=1 - 0.25 * i, lw=1)
        ax.set(title=f"{name} shots", xlabel="time (fs)", ylabel="power (GW)")
    ax = axes[0, 2]
    ax.plot(
        t_fs, simulated.power.mean(axis=0) / 1e9, color=SIMULATED, label="simulated"
    )
    ax.plot(
        t_fs,
        generated.power.mean(axis=0) / 1e9,
        color=GENERATED,
        ls="--",
        label="generated",
    )
    ax.set(title="mean power", xlabel="time (fs)", ylabel="power (GW)")
    ax.legend()

    if with_spectra:
        assert simulated.spectrum is not None and generated.spectrum is not None
        energy = simulated.photon_energy
        if energy is None:
            energy = np.arange(simulated.spectrum.shape[1], dtype=float)
        for ax, pulses, colour, name in (
            (axes[1, 0], simulated, SIMULATED, "simulated"),
            (axes[1, 1], generated, GENERATED, "generated"),
        ):
            assert pulses.spectrum is not None
            ax.plot(energy, pulses.spectrum[0] * 1e6, color=colour, lw=1)
            ax.set(
                title=f"{name} spectrum, one shot",
                xlabel="photon energy (eV)",
                ylabel="spectral density (uJ/eV)",
            )
        ax = axes[1, 2]
        ax.plot(
            energy,
            simulated.spectrum.mean(axis=0) * 1e6,
            color=SIMULATED,
            label="simulated",
        )
        ax.plot(
            energy,
            generated.spectrum.mean(axis=0) * 1e6,
            color=GENERATED,
            ls="--",
            label="generated",
        )
        ax.set(
            title="mean spectrum",
            xlabel="photon energy (eV)",
            ylabel="spectral density (uJ/eV)",
        )
        ax.legend()
    if title:
        fig.suptitle(title)
    return _write(fig, path)


def plot_distributions(
    simulated: Pulses,
    generated: Pulses,
    path: str | Path,
    *,
    title: str = "",
    criteria: SpikeCriteria | None = None,
) -> Path:
    """Histograms of pulse energy (relative to the simulated mean), spike count
    and spike width, simulated against generated."""
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax_energy, ax_count, ax_width = fig.subplots(1, 3)
    scale = simulated.energies.mean()
    sim_energy, gen_energy = simulated.energies / scale, generated.energies / scale
    bins = np.linspace(0, max(sim_energy.max(), gen_energy.max()), 50)
    ax_energy.hist(
        sim_energy, bins, density=True, color=SIMULATED, alpha=0.6, label="simulated"
    )
    ax_energy.hist(
        gen_energy,
        bins,
        density=True,
        histtype="step",
        color=GENERATED,
        lw=1.5,
        label="generated",
    )
    ax_energy.set(xlabel="pulse energy / simulated mean", ylabel="density")
    ax_energy.legend()

    sim_count, sim_width = spikes(simulated.power, simulated.dt, criteria)
    gen_count, gen_width = spikes(generated.power, generated.dt, criteria)
    top = int(max(sim_count.max(), gen_count.max())) + 2
    count_bins = np.arange(-0.5, top, 1.0)
    ax_count.hist(sim_count, count_bins, density=True, color=SIMULATED, alpha=0.6)
    ax_count.hist(
        gen_count, count_bins, density=True, histtype="step", color=GENERATED, lw=1.5
    )
    ax_count.set(xlabel="spikes per shot", ylabel="density")

    width_bins = np.linspace(0, np.percentile(sim_width, 99) * 1.5e15, 40)
    ax_width.hist(
        sim_width * 1e15, width_bins, density=True, color=SIMULATED, alpha=0.6
    )
    ax_width.hist(
        gen_width * 1e15,
        width_bins,
        density=True,
        histtype="step",
        color=GENERATED,
        lw=1.5,
    )
    ax_width.set(xlabel="spike FWHM (fs)", ylabel="density")
    if title:
        fig.suptitle(title)
    return _write(fig, path)


def plot_learning_curve(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """The critic's Wasserstein estimate and the gradient penalty per epoch."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["wasserstein"] for h in history], label="Wasserstein estimate")
    ax.plot(epochs, [h["gradient_penalty"] for h in history], label="gradient penalty")
    ax.set(xlabel="epoch", ylabel="critic", yscale="symlog")
    ax.legend()
    return _write(fig, path)


def _write(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png")
    log.info("wrote plot %s", target)
    return target
