"""Is a pulse generator statistically faithful to the simulation?

SASE pulses are judged by their statistics, never shot by shot.  For every
condition (a set of beam parameters) the generated pulses are compared with
held-out simulated ones:

- pulse energy: its mean, the number of modes M = <W>^2 / var(W) (the shape
  of the gamma distribution of linear-regime SASE), and the Wasserstein-1
  distance and Kolmogorov-Smirnov statistic between the two distributions of
  W / <W_simulated>;
- spikes: the mean number per shot and their mean full width at half
  maximum;
- the coherence time from the intensity correlation g2 (the Siegert
  relation g2 = 1 + |g1|^2 holds for the chaotic light of linear SASE);
- the mean power profile, and the rms width of the mean spectrum;
- diversity on a fixed noise batch: a collapsed generator gives nearly the
  same pulse for every noise vector.

:func:`verdict` keeps back a generator that is collapsed or misses any
threshold of :class:`FidelityThresholds`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import signal, stats

from wakefield.config import StrictModel

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating]


class SpikeCriteria(StrictModel):
    """What counts as a spike in a power profile."""

    min_prominence: float = Field(default=0.1, gt=0, lt=1)
    """A spike rises at least this fraction of the shot's peak power above the
    higher of the two minima around it."""


class FidelityThresholds(StrictModel):
    """The largest differences a faithful generator may show, per condition.

    Relative differences are |generated - simulated| / simulated.
    """

    mean_energy: float = Field(default=0.05, gt=0)
    """Relative difference of the mean pulse energy."""
    modes: float = Field(default=0.05, gt=0)
    """Relative difference of the number of modes M."""
    spike_count: float = Field(default=0.05, gt=0)
    """Relative difference of the mean number of spikes per shot."""
    spike_width: float = Field(default=0.10, gt=0)
    """Relative difference of the mean spike width."""
    spectral_width: float = Field(default=0.10, gt=0)
    """Relative difference of the rms width of the mean spectrum."""
    profile_distance: float = Field(default=0.10, gt=0)
    """L2 distance of the mean power profiles relative to the simulated one."""
    energy_ks: float = Field(default=0.10, gt=0, le=1)
    """Kolmogorov-Smirnov statistic of the pulse energy distributions."""
    min_diversity: float = Field(default=0.5, gt=0, le=1)
    """Generated diversity on the fixed noise batch, relative to simulation;
    below it the generator counts as collapsed."""


@dataclass(frozen=True)
class Pulses:
    """A set of shots at one condition.

    ``power`` is in W (shots x time, step ``dt`` in s); ``spectrum`` in J/eV
    (shots x photon energy, on ``photon_energy`` in eV) when known.
    """

    power: FloatArray
    dt: float
    spectrum: FloatArray | None = None
    photon_energy: FloatArray | None = None

    @property
    def energies(self) -> FloatArray:
        """Pulse energies, J."""
        return np.asarray(self.power.sum(axis=1, dtype=np.float64) * self.dt)


@dataclass(frozen=True)
class PulseStatistics:
    """The statistics of one set of shots that fidelity is judged by."""

    n_shots: int
    mean_energy: float
    """Mean pulse energy, J."""
    modes: float
    """M = <W>^2 / var(W)."""
    spike_count: float
    """Mean number of spikes per shot."""
    spike_width: float
    """Mean FWHM of the spikes, s."""
    coherence_time: float
    """Integral of g2 - 1 over the lag, s."""
    spectral_width: float | None
    """rms width of the mean spectrum, eV."""


@dataclass(frozen=True)
class ConditionReport:
    """Generated against simulated pulses at one condition."""

    condition: dict[str, float]
    simulated: PulseStatistics
    generated: PulseStatistics
    energy_wasserstein: float
    """W1 distance between the distributions of W / <W_simulated>."""
    energy_ks: float
    profile_distance: float
    diversity: float | None = None
    """Generated diversity on the fixed noise batch relative to simulation."""

    def relative(self, name: str) -> float:
        """|generated - simulated| / simulated for a :class:`PulseStatistics` field."""
        sim = getattr(self.simulated, name)
        gen = getattr(self.generated, name)
        if sim is None or gen is None:
            return math.nan
        return abs(gen - sim) / abs(sim) if sim else math.inf

    def row(self) -> dict[str, float]:
        """A flat table row: the condition, then simulated, generated and
        relative values of mean energy, modes and spike count."""
        out = dict(self.condition)
        for name in ("mean_energy", "modes", "spike_count", "spike_width"):
            out[f"{name}_sim"] = getattr(self.simulated, name)
            out[f"{name}_gen"] = getattr(self.generated, name)
            out[f"{name}_rel"] = self.relative(name)
        out["energy_ks"] = self.energy_ks
        out["profile_distance"] = self.profile_distance
        if self.diversity is not None:
            out["diversity"] = self.diversity
        return out


@dataclass(frozen=True)
class Verdict:
    """Whether a generator may be published, and why not."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    collapsed: bool = False


class PulseSampler(Protocol):
    """A generator that draws pulses for a condition from a seeded noise batch."""

    def sample_power(
        self, condition: Mapping[str, float], n: int, *, seed: int
    ) -> FloatArray: ...


# -- per-shot analysis -------------------------------------------------------


def spikes(
    power: FloatArray, dt: float, criteria: SpikeCriteria | None = None
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Spike count per shot, and the FWHM (s) of every spike found.

    A spike is a local maximum whose prominence is at least
    ``criteria.min_prominence`` times the shot's peak power; its width is
    measured at half its prominence.
    """
    criteria = criteria or SpikeCriteria()
    counts = np.zeros(power.shape[0], dtype=np.int64)
    widths: list[FloatArray] = []
    for i, shot in enumerate(np.asarray(power, dtype=np.float64)):
        top = shot.max()
        if not top > 0:
            continue
        peaks, props = signal.find_peaks(shot, prominence=criteria.min_prominence * top)
        counts[i] = peaks.size
        if peaks.size:
            fwhm = signal.peak_widths(
                shot,
                peaks,
                rel_height=0.5,
                prominence_data=(
                    props["prominences"],
                    props["left_bases"],
                    props["right_bases"],
                ),
            )[0]
            widths.append(fwhm * dt)
    all_widths = np.concatenate(widths) if widths else np.empty(0)
    return counts, all_widths


def modes(energies: FloatArray) -> float:
    """The number of modes M = <W>^2 / var(W) of pulse energies."""
    w = np.asarray(energies, dtype=np.float64)
    variance = w.var(ddof=1)
    return float(w.mean() ** 2 / variance) if variance > 0 else math.inf


def coherence_time(power: FloatArray, dt: float, max_lag: int | None = None) -> float:
    """Coherence time, s, from the intensity correlation of many shots.

    g2(tau) = sum_t <P_t P_t+tau> / sum_t <P_t> <P_t+tau>, and
    tau_c = integral of (g2 - 1) over tau (Siegert: |g1|^2 = g2 - 1),
    taken over lags up to ``max_lag`` samples (a quarter of the window by
    default).
    """
    p = np.asarray(power, dtype=np.float64)
    n_time = p.shape[1]
    max_lag = max_lag or n_time // 4
    mean = p.mean(axis=0)
    # Correlations at every lag at once: products summed over shots, by FFT.
    size = 2 * n_time
    spectrum = np.fft.rfft(p, n=size, axis=1)
    pair = np.fft.irfft(np.sum(np.abs(spectrum) ** 2, axis=0), n=size)[: max_lag + 1]
    pair /= p.shape[0]
    mean_spectrum = np.fft.rfft(mean, n=size)
    independent = np.fft.irfft(np.abs(mean_spectrum) ** 2, n=size)[: max_lag + 1]
    g2_minus_1 = pair / np.where(independent > 0, independent, np.inf) - 1
    return float(dt * (g2_minus_1[0] + 2 * g2_minus_1[1:].sum()))


def spectral_width(spectrum: FloatArray, photon_energy: FloatArray) -> float:
    """rms width, eV, of the mean spectrum of a set of shots."""
    mean = np.asarray(spectrum, dtype=np.float64).mean(axis=0)
    e = np.asarray(photon_energy, dtype=np.float64)
    total = mean.sum()
    centre = np.sum(e * mean) / total
    return float(math.sqrt(np.sum((e - centre) ** 2 * mean) / total))


def statistics(
    pulses: Pulses, criteria: SpikeCriteria | None = None
) -> PulseStatistics:
    """The statistics of a set of shots at one condition."""
    counts, widths = spikes(pulses.power, pulses.dt, criteria)
    energies = pulses.energies
    width = None
    if pulses.spectrum is not None and pulses.photon_energy is not None:
        width = spectral_width(pulses.spectrum, pulses.photon_energy)
    return PulseStatistics(
        n_shots=int(pulses.power.shape[0]),
        mean_energy=float(energies.mean()),
        modes=modes(energies),
        spike_count=float(counts.mean()),
        spike_width=float(widths.mean()) if widths.size else math.nan,
        coherence_time=coherence_time(pulses.power, pulses.dt),
        spectral_width=width,
    )


def diversity(power: FloatArray) -> float:
    """Mean pairwise distance of power profiles, in [0, 1].

    d(i, j) = sum_t |P_i - P_j| / sum_t (P_i + P_j): 0 for identical shots,
    1 for shots that never overlap.
    """
    p = np.asarray(power, dtype=np.float64)
    n = p.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 shots, got {n}")
    upper = np.triu_indices(n, k=1)
    total = p.sum(axis=1)
    distances = np.empty(upper[0].size)
    # Row by row keeps memory at n x time rather than n x n x time.
    start = 0
    for i in range(n - 1):
        rest = p[i + 1 :]
        d = np.abs(rest - p[i]).sum(axis=1) / np.maximum(
            total[i + 1 :] + total[i], 1e-300
        )
        distances[start : start + d.size] = d
        start += d.size
    return float(distances.mean())


# -- comparison and verdict --------------------------------------------------


def compare(
    condition: Mapping[str, float],
    simulated: Pulses,
    generated: Pulses,
    *,
    criteria: SpikeCriteria | None = None,
    diversity_ratio: float | None = None,
) -> ConditionReport:
    """Compare generated with held-out simulated pulses at one condition.

    Both sets must share the time grid.  ``diversity_ratio`` is the result
    of :func:`fixed_noise_diversity` for this condition, if computed.
    """
    if simulated.power.shape[1] != generated.power.shape[1]:
        raise ValueError(
            f"simulated pulses have {simulated.power.shape[1]} time samples and "
            f"generated ones {generated.power.shape[1]}; compare them on one grid"
        )
    sim_stats = statistics(simulated, criteria)
    gen_stats = statistics(generated, criteria)
    scale = sim_stats.mean_energy
    sim_w = simulated.energies / scale
    gen_w = generated.energies / scale
    sim_profile = simulated.power.mean(axis=0)
    gen_profile = generated.power.mean(axis=0)
    distance = np.linalg.norm(gen_profile - sim_profile) / np.linalg.norm(sim_profile)
    return ConditionReport(
        condition=dict(condition),
        simulated=sim_stats,
        generated=gen_stats,
        energy_wasserstein=float(stats.wasserstein_distance(sim_w, gen_w)),
        energy_ks=float(stats.ks_2samp(sim_w, gen_w).statistic),
        profile_distance=float(distance),
        diversity=diversity_ratio,
    )


def fixed_noise_diversity(
    sampler: PulseSampler,
    condition: Mapping[str, float],
    simulated: Pulses,
    *,
    n: int = 64,
    seed: int = 0,
) -> float:
    """Diversity of ``n`` generated shots from a fixed, seeded noise batch,
    relative to the diversity of ``n`` simulated shots at the same condition.

    About 1 for a faithful generator, near 0 for a collapsed one.
    """
    generated = sampler.sample_power(condition, n, seed=seed)
    reference = diversity(simulated.power[:n])
    return diversity(generated) / reference


def verdict(
    reports: Sequence[ConditionReport], thresholds: FidelityThresholds | None = None
) -> Verdict:
    """Accept a generator only if every condition passes every threshold."""
    limits = thresholds or FidelityThresholds()
    if not reports:
        return Verdict(False, ["no condition was tested; compare at least one"])
    reasons: list[str] = []
    collapsed = False
    for report in reports:
        where = ", ".join(f"{k}={v:.4g}" for k, v in report.condition.items())
        if report.diversity is not None and report.diversity < limits.min_diversity:
            collapsed = True
            reasons.append(
                f"[{where}] collapsed: diversity {report.diversity:.3f} of the "
                f"simulated, below {limits.min_diversity}"
            )
        for name in ("mean_energy", "modes", "spike_count", "spike_width"):
            reasons += _relative_reason(report, name, getattr(limits, name), where)
        if report.simulated.spectral_width is not None:
            reasons += _relative_reason(
                report, "spectral_width", limits.spectral_width, where
            )
        for name in ("profile_distance", "energy_ks"):
            value, limit = getattr(report, name), getattr(limits, name)
            if not value <= limit:
                reasons.append(f"[{where}] {name} {value:.3f} exceeds {limit}")
    for reason in reasons:
        log.info("generator kept back: %s", reason)
    return Verdict(not reasons, reasons, collapsed)


def _relative_reason(
    report: ConditionReport, name: str, limit: float, where: str
) -> list[str]:
    rel = report.relative(name)
    if rel <= limit:
        return []
    sim = getattr(report.simulated, name)
    gen = getattr(report.generated, name)
    return [
        f"[{where}] {name}: generated {gen:.4g} vs simulated {sim:.4g} "
        f"({rel:.1%} apart, limit {limit:.0%})"
    ]
