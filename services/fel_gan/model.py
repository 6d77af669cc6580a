"""The conditional WGAN-GP that draws SASE pulses for given beam parameters.

Representation: the generator produces the complex field envelope E(t)
(real and imaginary parts), not the power.  In the linear regime the SASE
field is a Gaussian random process, so a generator that gets the field's
second-order statistics right also gets the spiky power (|E|^2 is locally
exponentially distributed), the gamma-distributed pulse energy and the
spectrum (|FFT E|^2) right, all from one consistent sample; a generator of
power profiles would have to learn where spikes may sit and how their
heights correlate.  The spectrum comes with every pulse for free.

Scale: pulse energies differ by orders of magnitude between conditions
(the gain is exponential in the Pierce parameter), so the field is divided
by sqrt(S(c)), where log S(c) is a least-squares fit of the log mean power
over the window, a tensor-product polynomial (quadratic in each
condition).  The networks see fields of unit mean power; the fit restores
watts.  After training the fit is corrected so that the generated mean
power matches the training data at every training condition
(``training.calibrate_energy``).

The critic sees the field, its power, its spectrum and its log energy, so
the spike statistics and the energy distribution are in plain view.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, StrictBool, model_validator
from torch import Tensor, nn

from wakefield.config import StrictModel
from wakefield.errors import ExtrapolationWarning, SpecError

from ..simulators.sase import HBAR, spectrum
from .fidelity import Pulses

log = logging.getLogger(__name__)


class ConditionSpec(StrictModel):
    """One beam parameter the generator is conditioned on."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    unit: str = ""
    low: float
    """Lowest value seen in training, in ``unit``; scaled to -1."""
    high: float
    """Highest value seen in training, in ``unit``; scaled to +1."""

    @model_validator(mode="after")
    def _check_range(self) -> ConditionSpec:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"{self.name}: low and high must be finite")
        if self.high <= self.low:
            raise ValueError(
                f"{self.name}: high ({self.high}) must exceed low ({self.low}); "
                "train on at least two values of every condition"
            )
        return self


class GanConfig(StrictModel):
    """Everything needed to rebuild the generator and use its samples."""

    conditions: list[ConditionSpec] = Field(min_length=1)
    n_time: int = Field(ge=16)
    """Time samples per pulse."""
    dt: float = Field(gt=0)
    """Time step, s."""
    photon_energy: float = Field(gt=0)
    """Photon energy at the centre of the spectrum, eV."""
    generator_width: int = Field(default=128, ge=4)
    """Hidden units of the generator's response and envelope networks."""
    saturation: StrictBool = False
    """Learn a pointwise gain on the generated power (saturation); without
    it the generated field is Gaussian, as in the linear regime."""
    critic_width: int = Field(default=16, ge=4)
    """Channels of the critic's first convolution."""
    scale_terms: list[list[int]] = Field(default_factory=lambda: [list[int]()])
    """Monomials of log S(c), the log mean power (W) over the window, in the
    scaled conditions: each the indices of the conditions multiplied, the
    first the constant."""
    scale_coefficients: list[float] = Field(default_factory=lambda: [0.0])
    """Coefficients of the monomials in ``scale_terms``."""
    info: dict[str, Any] = Field(default_factory=dict)
    """Provenance: the dataset, training and fidelity results."""

    @model_validator(mode="after")
    def _check_scale(self) -> GanConfig:
        k = len(self.conditions)
        if len(self.scale_terms) != len(self.scale_coefficients):
            raise ValueError(
                f"{len(self.scale_terms)} scale terms but "
                f"{len(self.scale_coefficients)} coefficients; give one per term"
            )
        if any(not 0 <= i < k for term in self.scale_terms for i in term):
            raise ValueError(f"scale terms may name conditions 0 to {k - 1} only")
        return self

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]


# -- conditions and scale ----------------------------------------------------


def scale_conditions(config: GanConfig, values: npt.ArrayLike) -> Tensor:
    """Conditions (samples x conditions, in their units) scaled to [-1, 1]."""
    array = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if array.shape[1] != len(config.conditions):
        raise SpecError(
            f"got {array.shape[1]} condition values per sample; the generator is "
            f"conditioned on {config.condition_names}, in that order"
        )
    low = np.array([c.low for c in config.conditions])
    high = np.array([c.high for c in config.conditions])
    scaled = 2 * (array - low) / (high - low) - 1
    return torch.as_tensor(scaled, dtype=torch.float32)


def scale_terms(scaled: Tensor) -> list[list[int]]:
    """The monomials of the scale fit, each a list of condition indices.

    The tensor product of one polynomial per condition: a condition that
    takes two distinct values enters to degree 1, one with three or more to
    degree 2 (with two levels its square is the constant).  On a grid of
    three levels per condition the fit interpolates the mean power of every
    training condition; between them it is the smooth tensor-product
    quadratic.  A full quadratic in the conditions missed the centre of such
    a grid by 5 %, more than the networks made up for.
    """
    degrees = [
        min(2, len(torch.unique(scaled[:, i])) - 1) for i in range(scaled.shape[1])
    ]
    powers = itertools.product(*(range(d + 1) for d in degrees))
    terms = [
        [i for i, p in enumerate(power) for _ in range(p)]
        for power in sorted(powers, key=lambda power: (sum(power), power[::-1]))
    ]
    return terms


def monomials(scaled: Tensor, terms: Sequence[Sequence[int]]) -> Tensor:
    """The scale fit's features: one column per term, a product of conditions."""
    columns = [torch.ones_like(scaled[:, 0])]
    for term in terms[1:]:
        column = torch.ones_like(scaled[:, 0])
        for i in term:
            column = column * scaled[:, i]
        columns.append(column)
    return torch.stack(columns, dim=1)


def fit_scale(
    scaled: Tensor, mean_power: Tensor
) -> tuple[list[list[int]], list[float]]:
    """Terms and least-squares coefficients of the log mean power (W) on them.

    ``scaled`` holds the distinct conditions; where terms outnumber them the
    minimum-norm solution is taken.
    """
    terms = scale_terms(scaled)
    features = monomials(scaled, terms).double()
    target = torch.log(mean_power.double()).unsqueeze(1)
    solution = torch.linalg.lstsq(features, target, driver="gelsd").solution
    return terms, [float(v) for v in solution.squeeze(1)]


def log_scale(config: GanConfig, scaled: Tensor) -> Tensor:
    """log S(c): the log mean power over the window, W, for scaled conditions."""
    coefficients = torch.tensor(config.scale_coefficients, dtype=torch.float64)
    features = monomials(scaled, config.scale_terms).double()
    return (features @ coefficients).float()


# -- networks ----------------------------------------------------------------


class Generator(nn.Module):
    """Complex white noise and scaled conditions to fields of unit mean power.

    The generator builds a field the way SASE does, with every ingredient
    learned from the conditions:

    1. complex white noise (the shot noise), (batch, 2, n_time);
    2. filtered by a frequency response H(c, omega), an MLP of the conditions
       giving log |H|^2 at every frequency (the gain bandwidth and so the
       coherence time);
    3. multiplied by an envelope A(c, t), an MLP of the conditions (the
       current profile as amplified, gain narrowing included);
    4. only with ``GanConfig.saturation``: its power passed through a
       pointwise gain s(P, c) that keeps the phase, a small network of the
       local log power and the conditions, zero at the start so that the
       generator begins linear.

    Up to step 4 the field is a Gaussian random process, as SASE is in its
    linear regime, so the spikes are exponentially distributed in height and
    the pulse energy is gamma distributed with the number of modes that H and
    A set; the critic has only to teach the generator their shapes.  A
    convolution stack with pointwise non-linearities in its place matched the
    spike count and width but let the energy variance, and so M, drift by up
    to 25 % from one condition to the next (``docs/fel.md``).  Step 4 is off
    by default: far from saturation it only adds freedom, and on the bench it
    moved M by 2 %.
    Output: (batch, 2, n_time), the real and imaginary parts.
    """

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        k, w, n = len(config.conditions), config.generator_width, config.n_time
        self.n_time = n
        self.response = nn.Sequential(
            nn.Linear(k, w),
            nn.LeakyReLU(0.2),
            nn.Linear(w, w),
            nn.LeakyReLU(0.2),
            nn.Linear(w, n),
        )
        self.envelope = nn.Sequential(
            nn.Linear(k, w), nn.LeakyReLU(0.2), nn.Linear(w, n), nn.Softplus()
        )
        self.saturation: nn.Sequential | None = None
        if config.saturation:
            last = nn.Conv1d(32, 1, 1)
            nn.init.zeros_(last.weight)
            assert last.bias is not None
            nn.init.zeros_(last.bias)
            self.saturation = nn.Sequential(
                nn.Conv1d(1 + k, 32, 1), nn.LeakyReLU(0.2), last
            )

    def forward(self, z: Tensor, condition: Tensor) -> Tensor:
        # |H| only: filtered circular white noise is a stationary Gaussian
        # process whose statistics depend on |H|^2 alone, so H's phase would
        # be a redundant output.  In log form a band edge can fall by decades.
        response = torch.exp(0.5 * self.response(condition))
        white = torch.fft.fft(torch.complex(z[:, 0], z[:, 1]))
        field = torch.fft.ifft(response * white)
        field = field * self.envelope(condition)
        if self.saturation is None:
            return torch.stack([field.real, field.imag], dim=1)
        power = field.real**2 + field.imag**2
        local = torch.cat(
            [
                torch.log(power + 1e-6).unsqueeze(1),
                condition.unsqueeze(2).expand(-1, -1, self.n_time),
            ],
            dim=1,
        )
        field = field * torch.exp(0.5 * self.saturation(local).squeeze(1))
        return torch.stack([field.real, field.imag], dim=1)

    def noise(self, n: int, generator: torch.Generator) -> Tensor:
        """A latent batch of ``n`` complex white-noise sequences of unit power."""
        return torch.randn(n, 2, self.n_time, generator=generator) * math.sqrt(0.5)

    def scale_output(self, gain: Tensor) -> None:
        """Multiply the (still linear) field by ``gain``, through H's last layer."""
        last = self.response[-1]
        assert isinstance(last, nn.Linear)
        last.bias.add_(2 * torch.log(gain))


def field_features(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Power (batch, n), spectrum (batch, n) and log energy (batch,) of fields
    (batch, 2, n) of unit mean power, all differentiable."""
    complex_field = torch.complex(x[:, 0], x[:, 1])
    power = x[:, 0] ** 2 + x[:, 1] ** 2
    spec = torch.fft.fftshift(torch.fft.fft(complex_field).abs() ** 2, dim=-1)
    spec = spec / x.shape[-1]
    energy = torch.log(power.mean(dim=1) + 1e-6)
    return power, spec, energy


class Critic(nn.Module):
    """Scores a field under conditions: high for simulated, low for generated.

    It reads the real and imaginary parts and the power through two strided
    1-D convolutions, the spectrum through a second such branch, and the log
    pulse energy directly; the conditions enter by projection.  No normalisation layers, as the gradient penalty
    asks.  Kept small: it runs several times per generator step on a CPU.
    """

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        k, w, n = len(config.conditions), config.critic_width, config.n_time
        self.temporal = _branch(3, w)
        self.spectral = _branch(1, w)
        features = 2 * (2 * w * (n // 8)) + 1 + k
        self.features = nn.Sequential(nn.Linear(features, 256), nn.LeakyReLU(0.2))
        self.score = nn.Linear(256, 1)
        self.projection = nn.Sequential(
            nn.Linear(k, 64), nn.LeakyReLU(0.2), nn.Linear(64, 256)
        )

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        power, spec, energy = field_features(x)
        temporal = self.temporal(torch.cat([x, power.unsqueeze(1)], dim=1))
        spectral = self.spectral(spec.unsqueeze(1))
        joint = torch.cat([temporal, spectral, energy.unsqueeze(1), condition], dim=1)
        phi = self.features(joint)
        # Projection conditioning (Miyato and Koyama, ICLR 2018): the score's
        # dependence on the pulse is itself a function of the conditions.
        projected = torch.sum(phi * self.projection(condition), dim=1)
        score: Tensor = self.score(phi).squeeze(1) + projected
        return score


def _branch(channels: int, width: int) -> nn.Sequential:
    """Two strided convolutions, length n to n/8, flattened."""
    return nn.Sequential(
        nn.Conv1d(channels, width, 8, stride=4, padding=2),
        nn.LeakyReLU(0.2),
        nn.Conv1d(width, 2 * width, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    )


# -- sampling ----------------------------------------------------------------


class FelGan:
    """A trained generator with its config: draws pulses in physical units."""

    def __init__(self, config: GanConfig, generator: Generator | None = None) -> None:
        if config.n_time % 8:
            raise SpecError(
                f"n_time = {config.n_time} must be a multiple of 8 for the critic's "
                "strided convolutions; simulate on such a grid"
            )
        self.config = config
        self.generator = generator if generator is not None else Generator(config)

    @property
    def time(self) -> npt.NDArray[np.float64]:
        """Time axis, s, as the simulator lays it out."""
        n = self.config.n_time
        return np.asarray((np.arange(n) - n // 2) * self.config.dt, dtype=np.float64)

    @property
    def photon_energy(self) -> npt.NDArray[np.float64]:
        """Photon-energy axis of generated spectra, eV."""
        n, dt = self.config.n_time, self.config.dt
        omega = 2 * math.pi * np.fft.fftshift(np.fft.fftfreq(n, dt))
        return np.asarray(self.config.photon_energy + HBAR * omega, dtype=np.float64)

    def condition_row(self, condition: Mapping[str, float]) -> list[float]:
        """A condition mapping as a row in the generator's order."""
        missing = [n for n in self.config.condition_names if n not in condition]
        if missing:
            raise SpecError(
                f"condition lacks {missing}; the generator needs "
                f"{self.config.condition_names}"
            )
        return [float(condition[n]) for n in self.config.condition_names]

    def sample_field(
        self, conditions: npt.ArrayLike, *, seed: int, batch_size: int = 2048
    ) -> npt.NDArray[np.complex64]:
        """Complex field envelopes, sqrt(W), one shot per row of ``conditions``.

        Noise comes from a torch generator seeded with ``seed``, so the same
        seed gives the same shots.
        """
        values = np.atleast_2d(np.asarray(conditions, dtype=np.float64))
        scaled = scale_conditions(self.config, values)
        self._warn_outside(scaled)
        z = self.generator.noise(len(values), torch.Generator().manual_seed(seed))
        amplitude = torch.exp(0.5 * log_scale(self.config, scaled))
        parts = []
        self.generator.eval()
        with torch.no_grad():
            for start in range(0, len(values), batch_size):
                end = start + batch_size
                x = self.generator(z[start:end], scaled[start:end])
                x = x * amplitude[start:end, None, None]
                parts.append(torch.complex(x[:, 0], x[:, 1]))
        return torch.cat(parts).numpy()

    def sample_pulses(
        self, condition: Mapping[str, float], n: int, *, seed: int
    ) -> Pulses:
        """``n`` shots at one condition, with power (W) and spectrum (J/eV)."""
        row = np.tile(self.condition_row(condition), (n, 1))
        field = self.sample_field(row, seed=seed)
        return Pulses(
            power=np.abs(field) ** 2,
            dt=self.config.dt,
            spectrum=spectrum(field, self.config.dt),
            photon_energy=self.photon_energy,
        )

    def sample_power(
        self, condition: Mapping[str, float], n: int, *, seed: int
    ) -> npt.NDArray[np.floating[Any]]:
        """Power profiles, W, of ``n`` shots at one condition."""
        return self.sample_pulses(condition, n, seed=seed).power

    def _warn_outside(self, scaled: Tensor) -> None:
        outside = (scaled.abs() > 1 + 1e-6).any(dim=0)
        if outside.any():
            names = [
                n
                for n, o in zip(self.config.condition_names, outside, strict=True)
                if o
            ]
            warnings.warn(
                f"conditions {names} lie outside the ranges the generator was "
                "trained on; its pulses there are extrapolations",
                ExtrapolationWarning,
                stacklevel=3,
            )
