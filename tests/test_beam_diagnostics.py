"""Batched beam diagnostics against beams whose moments are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wakefield.services.simulators import beam_diagnostics as diagnostics

MASS = 510_998.95  # electron rest energy, eV


def _full(value: float) -> torch.Tensor:
    return torch.full((3,), value, dtype=torch.float64)


def _bunches(seed: int, n: int = 20_000) -> torch.Tensor:
    """Three Gaussian bunches of ``n`` particles with known correlations."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(3, n, 6, generator=gen, dtype=torch.float64)
    particles = torch.zeros(3, n, 7, dtype=torch.float64)
    particles[..., 6] = 1.0
    # x: beta 10 m, alpha -1, emittance 1e-9 m (geometric).
    particles[..., 0] = math.sqrt(1e-9 * 10.0) * u[..., 0] + 2e-6
    particles[..., 1] = math.sqrt(1e-9 / 10.0) * (u[..., 1] + u[..., 0])
    particles[..., 2] = 3e-5 * u[..., 2]
    particles[..., 3] = 1e-6 * u[..., 3]
    # Bunch lengths 10, 50 and 100 um; a chirp of 20 / m on the last one.
    lengths = torch.tensor([10e-6, 50e-6, 100e-6], dtype=torch.float64)
    particles[..., 4] = lengths.unsqueeze(-1) * u[..., 4]
    particles[..., 5] = 1e-4 * u[..., 5]
    particles[2, :, 5] += 20.0 * particles[2, :, 4]
    return particles


def test_transverse_moments_recover_twiss_and_emittance() -> None:
    """Beta, alpha, normalised emittance and centroid match the beam made."""
    particles = _bunches(0)
    energy = _full(1e9)
    x = diagnostics.transverse(particles, energy, MASS, "x")

    beta_gamma = math.sqrt(1e9**2 - MASS**2) / MASS
    torch.testing.assert_close(x["beta"], _full(10.0), rtol=0.03, atol=0)
    torch.testing.assert_close(x["alpha"], _full(-1.0), rtol=0.05, atol=0)
    expected = _full(1e-9 * beta_gamma)
    torch.testing.assert_close(x["norm_emit"], expected, rtol=0.03, atol=0)
    torch.testing.assert_close(x["centroid"], _full(2e-6), atol=3e-6, rtol=0)


def test_longitudinal_coordinates_and_chirp() -> None:
    """z is centred, delta is relative to the mean energy, the chirp is the slope."""
    particles = _bunches(1)
    particles[..., 4] += 1e-3  # an offset the centring must remove
    energy = _full(250e6)
    z, delta, mean = diagnostics.longitudinal(particles, energy, MASS)

    torch.testing.assert_close(z.mean(-1), _full(0.0), atol=1e-15, rtol=0)
    torch.testing.assert_close(delta.mean(-1), _full(0.0), atol=1e-15, rtol=0)
    torch.testing.assert_close(mean, energy, rtol=1e-5, atol=0)
    chirp = diagnostics.chirp(z, delta)
    assert float(chirp[2]) == pytest.approx(20.0, rel=0.02)
    assert abs(float(chirp[0])) < 0.5


def test_peak_current_of_gaussian_bunches() -> None:
    """The peak current of a Gaussian bunch is Q c / (sqrt(2 pi) sigma_z)."""
    particles = _bunches(2, n=50_000)
    z = particles[..., 4]
    charge = 250e-12 / z.shape[-1]
    sigma = z.std(dim=-1)
    expected = 250e-12 * diagnostics.SPEED_OF_LIGHT / (math.sqrt(2 * math.pi) * sigma)
    # At 50,000 particles the estimate scatters by about 1 %: 4 sigma is 4 %.
    torch.testing.assert_close(
        diagnostics.peak_current(z, charge), expected, rtol=0.04, atol=0
    )


def test_current_profile_integrates_to_the_charge_inside() -> None:
    """Summed over its bins, the current profile gives back the bunch charge."""
    particles = _bunches(3)
    z = particles[..., 4]
    edges = torch.linspace(-500e-6, 500e-6, 129, dtype=torch.float64)
    profile = diagnostics.current_profile(z, edges, 250e-12 / z.shape[-1])
    charge = profile.sum(-1) * (edges[1] - edges[0]) / diagnostics.SPEED_OF_LIGHT
    # +-500 um holds all but the 5-sigma tail of the 100 um bunch.
    torch.testing.assert_close(charge, _full(250e-12), rtol=1e-4, atol=0)


def test_histogram_2d_counts_each_point_once_in_its_bin() -> None:
    """Points land in the right (row, column) and outside points are dropped."""
    u = torch.tensor([[-0.9, 0.1, 0.6, 2.0], [0.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[-0.9, 0.6, -0.1, 0.0], [0.9, 0.9, -0.9, float("nan")]])
    edges = torch.linspace(-1.0, 1.0, 5)
    counts = diagnostics.histogram_2d(u, v, edges, edges)

    assert counts.shape == (2, 4, 4)
    expected = np.zeros((2, 4, 4))
    expected[0, 0, 0] = expected[0, 3, 2] = expected[0, 1, 3] = 1
    expected[1, 3, 2] = 2
    expected[1, 0, 2] = 1
    np.testing.assert_array_equal(counts.numpy(), expected)
