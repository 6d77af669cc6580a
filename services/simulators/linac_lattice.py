"""The LCLS-like main linac as a Cheetah lattice, and its injector beam.

:class:`LinacModel` builds the beamline for a group of samples (their RF
phases and voltages as tensors, so Cheetah tracks them in one call),
derives the nominal machine from the design (chicane bend angles from
their R56, the L1X voltage that linearises BC1, the linac voltages that
reach the design energies) and tracks the injector beam to the end.
The ``linac`` simulator (:mod:`.linac`) drives it; ``bench/linac_baseline.py``
uses it directly.

Cheetah is imported only when a :class:`LinacModel` is built.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import optimize

from wakefield.config import StrictModel
from wakefield.errors import SimulationError

from .beam_diagnostics import SPEED_OF_LIGHT as _C

LINACS = ("l1", "l2", "l3")
"""The scanned linacs, in beam order."""


@dataclass(frozen=True)
class LinacDesign:
    """The fixed parameters of the machine (SI units, eV, degrees).

    Energies, phases, R56 values and linac lengths follow published LCLS
    parameters (see ``docs/linac.md``); chicane and FODO geometry is chosen
    to be LCLS-like where no single published value applies.
    """

    injector_energy: float = 135e6
    """Reference energy at the injector exit, eV."""
    bc1_energy: float = 250e6
    """Reference energy at BC1 at nominal settings, eV."""
    bc2_energy: float = 4.3e9
    """Reference energy at BC2 at nominal settings, eV."""
    final_energy: float = 13.6e9
    """Reference energy at the end of L3 at nominal settings, eV."""

    l1_phase: float = -25.1
    """Nominal L1 phase, deg (LCLS convention)."""
    l2_phase: float = -41.4
    """Nominal L2 phase, deg."""
    l3_phase: float = 0.0
    """Nominal L3 phase, deg."""
    l1x_phase: float = -160.0
    """L1X phase, deg: 20 deg from the decelerating crest; not scanned."""

    bc1_r56: float = -45e-3
    """R56 of BC1 at its design energy, m (negative for a chicane)."""
    bc2_r56: float = -24.7e-3
    """R56 of BC2 at its design energy, m."""

    s_band_frequency: float = 2856e6
    """RF frequency of L1, L2 and L3, Hz."""
    x_band_frequency: float = 11.424e9
    """RF frequency of L1X, Hz."""

    l1_length: float = 8.78
    """Active length of L1, m."""
    l1x_length: float = 0.6
    """Active length of L1X, m."""
    l2_length: float = 329.1
    """Active length of L2, m."""
    l3_length: float = 552.9
    """Active length of L3, m."""

    l2_cells: int = 3
    """FODO cells in L2, each a focusing quad, half a cell of RF, a
    defocusing quad and half a cell of RF.  L1 is one structure, no quads."""
    l3_cells: int = 5
    """FODO cells in L3 (about as long as L2's, so the two match)."""
    cell_phase_advance: float = 45.0
    """Betatron phase advance per FODO cell (thin-lens design), deg."""
    quad_length: float = 0.1
    """Length of each quadrupole, m."""
    gap_length: float = 1.0
    """Drift between a linac and a chicane, m."""

    bc1_bend_length: float = 0.2
    """Length of each BC1 dipole, m."""
    bc1_outer_drift: float = 2.5
    """Projected distance between BC1's first and second dipoles, m."""
    bc1_inner_drift: float = 1.0
    """Distance between BC1's second and third dipoles, m."""
    bc2_bend_length: float = 0.55
    """Length of each BC2 dipole, m."""
    bc2_outer_drift: float = 10.0
    """Projected distance between BC2's first and second dipoles, m."""
    bc2_inner_drift: float = 1.0
    """Distance between BC2's second and third dipoles, m."""


LCLS = LinacDesign()
"""The LCLS-like reference machine."""


class LinacOptions(StrictModel):
    """Options of the ``linac`` simulator: the injector beam and the numerics."""

    n_particles: int = Field(default=10_000, ge=100, le=10_000_000)
    """Macro-particles per bunch."""
    beam_seed: int = Field(default=0, ge=0)
    """Seed of the injector beam; every sample starts from the same particles."""
    bunch_charge: float = Field(default=250e-12, gt=0.0)
    """Bunch charge, C."""
    bunch_length: float = Field(default=0.83e-3, gt=0.0)
    """Rms bunch length at the injector exit, m."""
    energy_spread: float = Field(default=1e-4, ge=0.0, lt=0.1)
    """Rms uncorrelated relative energy spread at the injector exit."""
    norm_emittance: float = Field(default=0.5e-6, gt=0.0)
    """Normalised rms emittance in x and y at the injector exit, m."""
    dtype: Literal["float64", "float32"] = "float64"
    """Precision of tracking; diagnostics are always computed in float64."""
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    """Torch device that tracks the particles: ``cpu``, ``cuda`` or ``cuda:N``."""
    max_batch: int = Field(default=256, ge=1)
    """Samples tracked together; memory grows by about 6 MB per sample at
    10,000 particles in float64."""
    lps_z_half_width: float = Field(default=250e-6, gt=0.0)
    """Half width in z of the final longitudinal phase space image and the
    current profile, m, around the bunch centroid."""
    lps_delta_half_width: float = Field(default=1e-2, gt=0.0)
    """Half height in relative energy of the final phase space image."""
    lps_bins: int = Field(default=64, ge=4, le=1024)
    """Bins along each axis of the phase space image."""
    current_bins: int = Field(default=128, ge=4, le=4096)
    """Bins of the final current profile."""


def import_cheetah() -> ModuleType:
    """Cheetah, or a :class:`SimulationError` that says how to install it."""
    try:
        cheetah = importlib.import_module("cheetah")
    except ImportError as exc:
        raise SimulationError(
            "the linac simulator tracks particles with Cheetah, which is not "
            f"installed ({exc}); install it with `pip install wakefield[linac]` "
            "(Cheetah is GPL-3.0, so it is an optional extra)"
        ) from exc
    return cheetah


def cheetah_phase(phase: np.ndarray | float) -> np.ndarray:
    """Cheetah's cavity phase (deg) for an LCLS-convention phase (deg)."""
    return -np.asarray(phase, dtype=np.float64)


@dataclass(frozen=True)
class ChicaneMap:
    """A chicane's second-order map around the reference orbit.

    ``out_i = sum_j R_ij x_j + sum_(j<=k) T_ijk x_j x_k`` over the six
    coordinates; ``R`` has shape ``(..., 6, 6)`` and ``T`` ``(..., 6, 6, 6)``
    with only ``j <= k`` filled.
    """

    R: torch.Tensor
    T: torch.Tensor

    @property
    def r56(self) -> torch.Tensor:
        """Path length per relative energy deviation, m (negative: a chicane)."""
        return self.R[..., 4, 5]

    @property
    def t566(self) -> torch.Tensor:
        """Second-order path length term, m."""
        return self.T[..., 4, 5, 5]


class LinacModel:
    """The machine in Cheetah: nominal RF, magnets, injector beam and lattice.

    Building it imports Cheetah and derives the nominal settings: the
    chicane bend angles that give the design R56, the L1X voltage that
    cancels the second-order curvature of the phase space after BC1, and
    the linac voltages that reach the design energies at the nominal phases.
    """

    _NOMINAL = ("quad_k1", "bend_angle", "l1x_voltage", "nominal_voltage", "twiss")
    _nominal_cache: ClassVar[dict[LinacDesign, dict[str, Any]]] = {}

    quad_k1: dict[str, float]
    """FODO quadrupole strength of L2 and L3, 1/m^2 (focusing quads)."""
    bend_angle: dict[str, float]
    """Bend angle of each dipole of BC1 and BC2, rad."""
    l1x_voltage: float
    """L1X voltage, V."""
    nominal_voltage: dict[str, float]
    """Voltage of L1, L2 and L3 at 100 %, V."""
    twiss: dict[str, tuple[float, float]]
    """Injector ``(beta, alpha)`` in x and y, m and 1."""

    def __init__(
        self, options: LinacOptions | None = None, design: LinacDesign = LCLS
    ) -> None:
        self.options = options if options is not None else LinacOptions()
        self.design = design
        self.cheetah = import_cheetah()
        self.dtype: torch.dtype = getattr(torch, self.options.dtype)
        self.device = torch.device(self.options.device)
        self.species = self.cheetah.Species(
            "electron", device=self.device, dtype=self.dtype
        )
        self.mass = float(self.species.mass_eV)

        # The nominal machine depends only on the design; it is derived once,
        # in float64 on the CPU, whatever precision the tracking uses.
        if design not in LinacModel._nominal_cache:
            if self.dtype == torch.float64 and self.device.type == "cpu":
                self._derive_nominal()
            else:
                LinacModel(LinacOptions(n_particles=100), design)
        for name, value in LinacModel._nominal_cache[design].items():
            setattr(self, name, value)
        self._particles: torch.Tensor | None = None

    def _derive_nominal(self) -> None:
        self.quad_k1 = {name: self._fodo_k1(name) for name in ("l2", "l3")}
        self.bend_angle = {n: self._bend_angle(n) for n in ("bc1", "bc2")}
        self.l1x_voltage = self._linearising_voltage()
        self.nominal_voltage = self._nominal_voltages()
        self.twiss = self._matched_twiss()
        LinacModel._nominal_cache[self.design] = {
            name: getattr(self, name) for name in self._NOMINAL
        }

    # -- the lattice ----------------------------------------------------------

    def sections(
        self, phase: Mapping[str, torch.Tensor], voltage: Mapping[str, torch.Tensor]
    ) -> list[tuple[str, Any]]:
        """The beamline as Cheetah segments, for one group of samples.

        :param phase: Cheetah cavity phase (deg) of each of ``LINACS``, shape
            ``(samples,)`` or scalar.
        :param voltage: total voltage (V) of each of ``LINACS``, same shape.
        :return: ``(name, Segment)`` in beam order: ``l1`` (L1, L1X and the
            drift to BC1), ``bc1``, ``l2``, ``bc2``, ``l3``.
        """
        ch, d = self.cheetah, self.design
        l1 = [
            ch.Cavity(
                length=self._t(d.l1_length),
                voltage=voltage["l1"],
                phase=phase["l1"],
                frequency=self._t(d.s_band_frequency),
                cavity_type="traveling_wave",
                name="l1_rf",
                **self._kw,
            ),
            ch.Cavity(
                length=self._t(d.l1x_length),
                voltage=self._t(self.l1x_voltage),
                phase=self._t(float(cheetah_phase(d.l1x_phase))),
                frequency=self._t(d.x_band_frequency),
                cavity_type="traveling_wave",
                name="l1x",
                **self._kw,
            ),
            self._drift(d.gap_length, "l1_to_bc1"),
        ]
        l2 = [self._drift(d.gap_length, "bc1_to_l2")]
        l2 += self._linac("l2", phase["l2"], voltage["l2"])
        l2 += [self._drift(d.gap_length, "l2_to_bc2")]
        l3 = [self._drift(d.gap_length, "bc2_to_l3")]
        l3 += self._linac("l3", phase["l3"], voltage["l3"])

        return [
            ("l1", ch.Segment(l1, name="l1")),
            ("bc1", ch.Segment(self._chicane("bc1"), name="bc1")),
            ("l2", ch.Segment(l2, name="l2")),
            ("bc2", ch.Segment(self._chicane("bc2"), name="bc2")),
            ("l3", ch.Segment(l3, name="l3")),
        ]

    def cavities(self, name: str) -> int:
        """How many Cheetah cavities share the voltage of linac ``name``."""
        return 1 if name == "l1" else 2 * int(getattr(self.design, f"{name}_cells"))

    def _linac(
        self, name: str, phase: torch.Tensor, voltage: torch.Tensor
    ) -> list[Any]:
        """FODO cells of L2 or L3, the RF split evenly between the half cells."""
        ch, d = self.cheetah, self.design
        halves = self.cavities(name)
        length = getattr(d, f"{name}_length") / halves
        elements = []
        for i in range(halves):
            sign = 1.0 if i % 2 == 0 else -1.0
            elements.append(
                ch.Quadrupole(
                    length=self._t(d.quad_length),
                    k1=self._t(sign * self.quad_k1[name]),
                    name=f"{name}_q{i + 1}",
                    **self._kw,
                )
            )
            elements.append(
                ch.Cavity(
                    length=self._t(length),
                    voltage=voltage / halves,
                    phase=phase,
                    frequency=self._t(d.s_band_frequency),
                    cavity_type="traveling_wave",
                    name=f"{name}_rf{i + 1}",
                    **self._kw,
                )
            )
        return elements

    def _chicane(self, name: str, angle: float | None = None) -> list[Any]:
        """A four-dipole chicane of rectangular bends, tracked to second order."""
        ch, d = self.cheetah, self.design
        theta = self.bend_angle[name] if angle is None else angle
        bend = getattr(d, f"{name}_bend_length")
        outer = getattr(d, f"{name}_outer_drift") / math.cos(theta)
        inner = getattr(d, f"{name}_inner_drift")

        def dipole(i: int, sign: float, e1: float, e2: float) -> Any:
            return ch.Dipole(
                length=self._t(bend),
                angle=self._t(sign * theta),
                dipole_e1=self._t(e1),
                dipole_e2=self._t(e2),
                tracking_method="second_order",
                name=f"{name}_b{i}",
                **self._kw,
            )

        def drift(i: int, length: float) -> Any:
            return ch.Drift(
                length=self._t(length),
                tracking_method="second_order",
                name=f"{name}_d{i}",
                **self._kw,
            )

        return [
            dipole(1, 1.0, 0.0, theta),
            drift(1, outer),
            dipole(2, -1.0, -theta, 0.0),
            drift(2, inner),
            dipole(3, -1.0, 0.0, -theta),
            drift(3, outer),
            dipole(4, 1.0, theta, 0.0),
        ]

    def _drift(self, length: float, name: str) -> Any:
        return self.cheetah.Drift(length=self._t(length), name=name, **self._kw)

    @property
    def _kw(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype}

    def _t(self, value: float) -> torch.Tensor:
        return torch.tensor(value, device=self.device, dtype=self.dtype)

    # -- tracking -------------------------------------------------------------

    def injector_beam(self) -> Any:
        """The bunch at the injector exit, a Cheetah ``ParticleBeam``."""
        particles = self.injector_particles()
        n = particles.shape[-2]
        return self.cheetah.ParticleBeam(
            particles=particles,
            energy=self._t(self.design.injector_energy),
            particle_charges=torch.full(
                (n,), self.options.bunch_charge / n, **self._kw
            ),
            species=self.species,
            **self._kw,
        )

    def injector_particles(self) -> torch.Tensor:
        """Gaussian injector particles from ``beam_seed``, shape ``(n, 7)``.

        Centred on the reference particle, with exactly the requested second
        moments; matched to arrive at L2 on its periodic FODO solution; no
        correlation between position and energy.
        """
        if self._particles is None:
            self._particles = self._make_particles()
        return self._particles

    def _make_particles(self) -> torch.Tensor:
        opts, d = self.options, self.design
        rng = np.random.default_rng(opts.beam_seed)
        u = rng.standard_normal((opts.n_particles, 6))

        # Whiten: zero mean and unit covariance exactly, so the beam's
        # moments are the requested ones, not a random draw around them.
        u -= u.mean(axis=0)
        u = np.linalg.solve(np.linalg.cholesky(np.cov(u.T, bias=True)), u.T).T

        beta_gamma = math.sqrt(d.injector_energy**2 - self.mass**2) / self.mass
        emittance = opts.norm_emittance / beta_gamma
        coordinates = np.empty((opts.n_particles, 7))
        for plane, (i, j) in {"x": (0, 1), "y": (2, 3)}.items():
            beta, alpha = self.twiss[plane]
            coordinates[:, i] = math.sqrt(emittance * beta) * u[:, i]
            coordinates[:, j] = math.sqrt(emittance / beta) * (
                u[:, j] - alpha * u[:, i]
            )
        coordinates[:, 4] = opts.bunch_length * u[:, 4]
        coordinates[:, 5] = opts.energy_spread * u[:, 5]
        coordinates[:, 6] = 1.0
        return torch.as_tensor(coordinates, **self._kw)

    def track(
        self,
        phase: Mapping[str, torch.Tensor],
        voltage: Mapping[str, torch.Tensor],
    ) -> dict[str, Any]:
        """Track the injector beam; the beams at the BC1 and BC2 exits and at
        the end of L3, keyed by ``STATIONS``."""
        beam = self.injector_beam()
        beams = {}
        for name, segment in self.sections(phase, voltage):
            if name.startswith("bc"):
                beam = self.track_chicane(segment, beam)
            else:
                beam = segment.track(beam)
            beams[name] = beam
        return {"bc1": beams["bc1"], "bc2": beams["bc2"], "end": beams["l3"]}

    def chicane_map(
        self, segment: Any, energy: torch.Tensor, second_order: bool = True
    ) -> ChicaneMap:
        """The map of a chicane, composed from its elements' Cheetah maps and
        truncated at second order (``T`` is zero if ``second_order`` is off)."""
        batch = energy.shape
        R = torch.eye(6, **self._kw).expand(*batch, 6, 6)
        T = torch.zeros(*batch, 6, 6, 6, **self._kw)
        for element in segment.elements:
            if not second_order:
                R = (
                    element.first_order_transfer_map(energy, self.species)[..., :6, :6]
                    @ R
                )
                continue
            full = element.second_order_transfer_map(energy, self.species)
            R_e = full[..., :6, 6, :6] + full[..., :6, :6, 6]
            T_e = full[..., :6, :6, :6]
            T = _compose_second_order(R_e, T_e, R, T)
            R = R_e @ R

        # Keep one coefficient per monomial: j <= k.
        T = torch.triu(T) + torch.triu(T.transpose(-1, -2), diagonal=1)
        return ChicaneMap(R=R, T=T)

    def track_chicane(self, segment: Any, beam: Any) -> Any:
        """Track a beam through a chicane with its composed second-order map.

        The same physics as Cheetah's element-by-element second-order
        tracking, to second order, at a fraction of the cost: Cheetah applies
        each element's full 7x7x7 tensor to every particle.
        """
        chicane = self.chicane_map(segment, beam.energy)
        R, T = chicane.R.unsqueeze(-1), chicane.T.unsqueeze(-1)

        # Coordinate-major copies make every step below a contiguous pass.
        x = beam.particles[..., :6].movedim(-1, 0).contiguous()
        linear = (chicane.R != 0).reshape(-1, 6, 6).any(dim=0)
        out = [
            sum(R[..., i, j, :] * x[j] for j in linear[i].nonzero().flatten().tolist())
            for i in range(6)
        ]

        # Each monomial x_j x_k is formed once and added wherever it appears.
        used = (chicane.T != 0).reshape(-1, 6, 6, 6).any(dim=0)
        for j, k in sorted({(j, k) for _, j, k in used.nonzero().tolist()}):
            monomial = x[j] * x[k]
            for i in used[:, j, k].nonzero().flatten().tolist():
                out[i] = out[i] + T[..., i, j, k, :] * monomial

        particles = torch.stack([*out, beam.particles[..., 6]], dim=-1)
        return self.cheetah.ParticleBeam(
            particles=particles,
            energy=beam.energy,
            particle_charges=beam.particle_charges,
            survival_probabilities=beam.survival_probabilities,
            s=beam.s + segment.length,
            species=beam.species,
            **self._kw,
        )

    # -- the nominal machine --------------------------------------------------

    def _fodo_k1(self, name: str) -> float:
        """Quadrupole strength (1/m^2) of a thin-lens FODO with the design
        phase advance per cell."""
        d = self.design
        halves = self.cavities(name)
        cell = 2 * (float(getattr(d, f"{name}_length")) / halves + d.quad_length)
        focal_length = cell / (4 * math.sin(math.radians(d.cell_phase_advance) / 2))
        return 1.0 / (focal_length * d.quad_length)

    def _bend_angle(self, name: str) -> float:
        """The bend angle (rad) that gives the chicane its design R56."""
        energy = self._t(getattr(self.design, f"{name}_energy"))
        target = float(getattr(self.design, f"{name}_r56"))

        def r56_error(angle: float) -> float:
            segment = self.cheetah.Segment(self._chicane(name, angle))
            chicane = self.chicane_map(segment, energy, second_order=False)
            return float(chicane.r56) - target

        # Start from the small-angle estimate R56 = -2 theta^2 (L + 2 Lb / 3).
        d = self.design
        lever = getattr(d, f"{name}_outer_drift") + 2 / 3 * getattr(
            d, f"{name}_bend_length"
        )
        guess = math.sqrt(abs(target) / (2 * lever))
        return float(optimize.newton(r56_error, guess, x1=1.01 * guess, tol=1e-13))

    def design_chicane_map(self, name: str) -> ChicaneMap:
        """The map of BC1 or BC2 at its design energy."""
        energy = self._t(getattr(self.design, f"{name}_energy"))
        return self.chicane_map(self.cheetah.Segment(self._chicane(name)), energy)

    def _linearising_voltage(self) -> float:
        """L1X voltage (V) that cancels the quadratic term of ``z`` after BC1.

        After L1 and L1X the relative energy is ``a z + b z^2`` and BC1 maps
        ``z`` to ``z + R56 delta + T566 delta^2``, so the quadratic term of the
        final position vanishes when ``R56 b + T566 a^2 = 0``.  The L1 voltage
        follows from the BC1 energy, so both change together.
        """
        d = self.design
        bc1 = self.design_chicane_map("bc1")
        r56, t566 = float(bc1.r56), float(bc1.t566)
        k1 = 2 * math.pi * d.s_band_frequency / _C
        kx = 2 * math.pi * d.x_band_frequency / _C
        psi1 = math.radians(float(cheetah_phase(d.l1_phase)))
        psix = math.radians(float(cheetah_phase(d.l1x_phase)))

        def quadratic_term(vx: float) -> float:
            v1 = (d.bc1_energy - d.injector_energy - vx * math.cos(psix)) / math.cos(
                psi1
            )
            a = (v1 * k1 * math.sin(psi1) + vx * kx * math.sin(psix)) / d.bc1_energy
            b = -(v1 * k1**2 * math.cos(psi1) + vx * kx**2 * math.cos(psix)) / (
                2 * d.bc1_energy
            )
            return float(r56 * b + t566 * a**2)

        return float(optimize.brentq(quadratic_term, 0.0, 200e6, xtol=1.0))

    def _nominal_voltages(self) -> dict[str, float]:
        """Voltages (V) that reach the design energies at the nominal phases."""
        d = self.design
        l1x_gain = self.l1x_voltage * math.cos(math.radians(d.l1x_phase))
        gains = {
            "l1": d.bc1_energy - d.injector_energy - l1x_gain,
            "l2": d.bc2_energy - d.bc1_energy,
            "l3": d.final_energy - d.bc2_energy,
        }
        return {
            name: gain / math.cos(math.radians(getattr(d, f"{name}_phase")))
            for name, gain in gains.items()
        }

    def _matched_twiss(self) -> dict[str, tuple[float, float]]:
        """``(beta, alpha)`` at the injector exit that arrive at L2 matched to
        its periodic FODO cell, with the RF off (cavities as drifts)."""
        ch, d = self.cheetah, self.design
        energy = self._t(d.injector_energy)
        half = d.l2_length / self.cavities("l2")
        k1 = self.quad_k1["l2"]
        cell = [
            ch.Quadrupole(length=self._t(d.quad_length), k1=self._t(k1), **self._kw),
            ch.Drift(length=self._t(half), **self._kw),
            ch.Quadrupole(length=self._t(d.quad_length), k1=self._t(-k1), **self._kw),
            ch.Drift(length=self._t(half), **self._kw),
        ]
        upstream = [
            ch.Drift(length=self._t(d.l1_length + d.l1x_length), **self._kw),
            self._drift(2 * d.gap_length, "gaps"),
            *self._chicane("bc1"),
        ]
        periodic = self._linear_map(cell, energy)
        to_l2 = self._linear_map(upstream, energy)

        twiss = {}
        for plane, i in (("x", 0), ("y", 2)):
            m = periodic[i : i + 2, i : i + 2]
            cos_mu = float(m[0, 0] + m[1, 1]) / 2
            if not -1.0 < cos_mu < 1.0:
                raise SimulationError(
                    f"the L2 FODO cell is unstable in {plane} "
                    f"(cos mu = {cos_mu:.3f}); lower cell_phase_advance"
                )
            sin_mu = math.copysign(math.sqrt(1 - cos_mu**2), float(m[0, 1]))
            beta = float(m[0, 1]) / sin_mu
            alpha = float(m[0, 0] - m[1, 1]) / (2 * sin_mu)

            # Carry the Twiss matrix back: B0 = M^-1 B1 M^-T.
            b1 = torch.tensor(
                [[beta, -alpha], [-alpha, (1 + alpha**2) / beta]], dtype=torch.float64
            )
            back = torch.linalg.inv(to_l2[i : i + 2, i : i + 2])
            b0 = back @ b1 @ back.T
            twiss[plane] = (float(b0[0, 0]), -float(b0[0, 1]))
        return twiss

    def _linear_map(self, elements: list[Any], energy: torch.Tensor) -> torch.Tensor:
        """First-order 7x7 map of a sequence of elements, in float64."""
        R = torch.eye(7, dtype=torch.float64)
        for element in elements:
            R = element.first_order_transfer_map(energy, self.species).double() @ R
        return R

    def description(self) -> dict[str, Any]:
        """The lattice and the derived nominal settings, as plain JSON data."""
        d = self.design
        phase = {
            name: torch.tensor(float(cheetah_phase(getattr(d, f"{name}_phase"))))
            for name in LINACS
        }
        voltage = {name: torch.tensor(v) for name, v in self.nominal_voltage.items()}
        elements = []
        for section, segment in self.sections(
            {k: v.to(**self._kw) for k, v in phase.items()},
            {k: v.to(**self._kw) for k, v in voltage.items()},
        ):
            for element in segment.elements:
                elements.append(_element_record(section, element))

        return {
            "design": asdict(d),
            "nominal": {
                "l1_voltage": self.nominal_voltage["l1"],
                "l2_voltage": self.nominal_voltage["l2"],
                "l3_voltage": self.nominal_voltage["l3"],
                "l1x_voltage": self.l1x_voltage,
                "bc1_bend_angle": self.bend_angle["bc1"],
                "bc2_bend_angle": self.bend_angle["bc2"],
                "quad_k1": self.quad_k1,
                "injector_twiss": {
                    p: {"beta": b, "alpha": a} for p, (b, a) in self.twiss.items()
                },
            },
            "conventions": {
                "phase": "deg, 0 on crest, gain V cos(phase), negative: head "
                "at lower energy (LCLS); Cheetah is given the negated phase",
                "r56": "m, negative for a chicane (Cheetah and LCLS agree)",
                "z": "m, positive towards the tail",
            },
            "elements": elements,
        }


def _compose_second_order(
    R_b: torch.Tensor, T_b: torch.Tensor, R_a: torch.Tensor, T_a: torch.Tensor
) -> torch.Tensor:
    """Second-order tensor of map ``b`` after map ``a``, truncated at second
    order: ``T_ilm = R_b,ij T_a,jlm + T_b,ijk R_a,jl R_a,km``."""
    carried = R_b @ T_a.reshape(*T_a.shape[:-2], 36)
    carried = carried.reshape(*carried.shape[:-1], 6, 6)
    # T_b,ijk R_a,km gives (i, j, m); then contract j with R_a,jl.
    right = T_b @ R_a.unsqueeze(-3)
    both = (right.transpose(-1, -2) @ R_a.unsqueeze(-3)).transpose(-1, -2)
    composed: torch.Tensor = carried + both
    return composed


def _element_record(section: str, element: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"section": section, "type": type(element).__name__}
    record["name"] = element.name
    for feature in ("length", "k1", "angle", "dipole_e1", "dipole_e2", "frequency"):
        value = getattr(element, feature, None)
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            record[feature] = float(value)
    if record["type"] == "Cavity":
        record["voltage"] = float(element.voltage)
        record["phase_cheetah"] = float(element.phase)
        record["cavity_type"] = element.cavity_type
    if hasattr(element, "tracking_method"):
        record["tracking"] = element.tracking_method
    return record
