"""The built-in ``linac`` simulator: an LCLS-like main linac tracked by Cheetah.

The machine runs from the injector exit (135 MeV) through the S-band linac
L1 and the X-band linearizer L1X to the first bunch compressor BC1
(250 MeV), then through L2 to BC2 (4.3 GeV) and through L3 to 13.6 GeV.
A scan sets six things: the RF phase (deg) and voltage (% of nominal) of
L1, L2 and L3.  ``docs/linac.md`` lists the parameters, their sources and
the conventions.

Phases follow the LCLS convention: 0 deg is on crest, the energy gain is
``V cos(phase)``, and a negative phase puts the bunch head at lower energy
than its tail, which the chicanes (``R56 < 0``) compress.  Cheetah's cavity
puts the head at higher energy for a negative phase, so Cheetah is given
the negated phase.

Cheetah is GPL-3.0 and an optional extra (``pip install wakefield[linac]``);
it is imported only when a machine is built, never when this module is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar

import numpy as np
import torch

from wakefield.config import StrictModel
from wakefield.errors import PhysicsWarning, SimulationError
from wakefield.simulator import Batch, Coordinate, Simulator
from wakefield.variables import Output, Setting

from . import beam_diagnostics as diagnostics
from .linac_lattice import (
    LCLS,
    LINACS,
    LinacDesign,
    LinacModel,
    LinacOptions,
    cheetah_phase,
    import_cheetah,
)

log = logging.getLogger(__name__)

STATIONS = ("bc1", "bc2", "end")
"""Where outputs are taken: the exits of BC1 and BC2, and the end of L3."""

_STATION_NAMES = {"bc1": "BC1", "bc2": "BC2", "end": "L3"}

_MIN_RELATIVE_GAIN = 2e-3
"""Smallest energy gain of one cavity, relative to the beam energy, that
Cheetah 0.8.4's cavity handles accurately.

Its second-order longitudinal terms divide by the energy gain: at a gain of
1e-4 of the beam energy the path-length terms are wrong by orders of
magnitude (measured: 0.3 mm instead of 28 um at 250 MeV), and at zero gain
(exactly +-90 deg) they are NaN.  At 1e-3 and above they agree with the
well-conditioned values to a few percent.  Phases closer to +-90 deg than
this are moved to it, with a ``PhysicsWarning``.
"""

_MIN_ENERGY_FRACTION = 0.1
"""A sample whose reference energy falls below this fraction of the injector
energy anywhere is lost: the linac model no longer describes it."""


def _scalar(name: str, unit: str, description: str) -> Output:
    return Output(name=name, unit=unit, description=description)


_STATION_OUTPUTS = {
    "energy": ("eV", "mean energy"),
    "energy_spread": ("1", "rms relative energy spread"),
    "bunch_length": ("m", "rms bunch length"),
    "peak_current": ("A", "peak current"),
    "chirp": ("1/m", "linear chirp d(delta)/dz, positive: tail at higher energy"),
}
_END_OUTPUTS = {
    **_STATION_OUTPUTS,
    "norm_emit_x": ("m", "normalised rms emittance in x"),
    "norm_emit_y": ("m", "normalised rms emittance in y"),
    "sigma_x": ("m", "rms beam size in x"),
    "sigma_y": ("m", "rms beam size in y"),
    "beta_x": ("m", "Twiss beta in x"),
    "beta_y": ("m", "Twiss beta in y"),
    "alpha_x": ("1", "Twiss alpha in x"),
    "alpha_y": ("1", "Twiss alpha in y"),
    "centroid_x": ("m", "beam centroid in x"),
    "centroid_y": ("m", "beam centroid in y"),
}


@dataclass
class _Plan:
    """What each sample asks of the machine, checked before tracking."""

    phase: dict[str, np.ndarray]
    """Cheetah cavity phase per linac, deg."""
    voltage: dict[str, np.ndarray]
    """Total voltage per linac, V."""
    failures: dict[int, str]
    adjusted: dict[int, float]
    """Samples whose phase was moved off a zero crossing, and the largest
    shift of each, deg."""

    def groups(self, size: int) -> Iterator[np.ndarray]:
        """Indices of trackable samples, grouped by the sign of each linac's
        energy gain and cut to at most ``size``.

        Cheetah's cavity chooses its second-order terms per call by whether
        any sample gains energy, so mixing signs would make a sample's result
        depend on its neighbours.
        """
        n = len(next(iter(self.phase.values())))
        good = np.array([i not in self.failures for i in range(n)], dtype=bool)
        signs = np.stack([np.cos(np.radians(self.phase[k])) > 0 for k in LINACS])
        keys = signs.T @ np.array([1, 2, 4])
        for key in np.unique(keys[good]):
            members = np.flatnonzero(good & (keys == key))
            for start in range(0, len(members), size):
                yield members[start : start + size]


class LinacSimulator(Simulator):
    """An LCLS-like main linac, L1 to L3 with two bunch compressors, on Cheetah.

    The six settings are the phase (deg) and voltage (% of nominal) of L1,
    L2 and L3.  The outputs are the beam's scalar parameters at the BC1 and
    BC2 exits and at the end of L3, its final longitudinal phase space as an
    image and its final current profile.
    """

    name: ClassVar[str] = "linac"
    Options: ClassVar[type[StrictModel]] = LinacOptions
    options: LinacOptions

    def __init__(self, options: StrictModel | None = None) -> None:
        if options is not None and not isinstance(options, LinacOptions):
            raise SimulationError(
                f"the linac simulator takes LinacOptions, got {type(options).__name__}"
            )
        super().__init__(options)
        self._model: LinacModel | None = None

    @property
    def model(self) -> LinacModel:
        """The machine, built (and Cheetah imported) on first use."""
        if self._model is None:
            self._model = LinacModel(self.options)
            log.debug("linac model built: %s", self._model.nominal_voltage)
        return self._model

    # -- declarations ---------------------------------------------------------

    def settings(self) -> list[Setting]:
        d = LCLS
        ranges = {"l1": (-40.0, -20.0), "l2": (-50.0, 0.0), "l3": (-10.0, 10.0)}
        out = []
        for name in LINACS:
            out.append(
                Setting(
                    name=f"{name}_phase",
                    unit="deg",
                    range=ranges[name],
                    default=getattr(d, f"{name}_phase"),
                    description=f"{name.upper()} RF phase: 0 on crest, negative "
                    "puts the bunch head at lower energy (compressing)",
                )
            )
        for name in LINACS:
            out.append(
                Setting(
                    name=f"{name}_voltage",
                    unit="%",
                    range=(50.0, 110.0),
                    default=100.0,
                    description=f"{name.upper()} RF voltage, percent of the "
                    "voltage that reaches the design energy at the nominal phase",
                )
            )
        return out

    def outputs(self) -> list[Output]:
        out = []
        for station in ("bc1", "bc2"):
            where = f"at the {_STATION_NAMES[station]} exit"
            for key, (unit, text) in _STATION_OUTPUTS.items():
                out.append(_scalar(f"{station}_{key}", unit, f"{text} {where}"))
        for key, (unit, text) in _END_OUTPUTS.items():
            out.append(_scalar(key, unit, f"{text} at the end of L3"))

        o = self.options
        out.append(
            Output(
                name="lps",
                unit="1",
                description="longitudinal phase space at the end of L3: fraction "
                "of the bunch in each (delta, z) bin, around the bunch centroid",
                dims=("lps_delta", "lps_z"),
                shape=(o.lps_bins, o.lps_bins),
                dtype="float32",
            )
        )
        out.append(
            Output(
                name="current_profile",
                unit="A",
                description="current against z at the end of L3, around the "
                "bunch centroid; head at negative z",
                dims=("current_z",),
                shape=(o.current_bins,),
                dtype="float32",
            )
        )
        return out

    def coordinates(self) -> dict[str, Coordinate]:
        o = self.options
        z_edges = self._edges(o.lps_z_half_width, o.lps_bins)
        delta_edges = self._edges(o.lps_delta_half_width, o.lps_bins)
        current_edges = self._edges(o.lps_z_half_width, o.current_bins)
        return {
            "lps_z": Coordinate(
                _centres(z_edges), "m", "bin centre in z - <z>; head at negative z"
            ),
            "lps_delta": Coordinate(
                _centres(delta_edges), "1", "bin centre in E / <E> - 1"
            ),
            "current_z": Coordinate(
                _centres(current_edges), "m", "bin centre in z - <z>"
            ),
        }

    @staticmethod
    def _edges(half_width: float, bins: int) -> np.ndarray:
        return np.linspace(-half_width, half_width, bins + 1)

    def provenance(self) -> dict[str, Any]:
        description = self.model.description()
        text = json.dumps(description, sort_keys=True, separators=(",", ":"))
        return {
            "simulator": self.name,
            "cheetah": metadata.version("cheetah-accelerator"),
            "torch": torch.__version__,
            "options": self.options.dump(),
            "lattice": description,
            "lattice_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }

    # -- simulation -----------------------------------------------------------

    def simulate(
        self, settings: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> Batch:
        """Track one batch of samples.

        ``rng`` is not used: the injector beam comes from the ``beam_seed``
        option, so that every sample starts from the same particles and the
        same settings always give the same outputs.
        """
        values = self._decode(settings)
        n = len(values["l1_phase"])
        outputs = {
            o.name: np.full((n, *o.shape), np.nan, dtype=o.dtype)
            for o in self.outputs()
        }
        plan = self._plan(values)
        if plan.adjusted:
            shift = max(plan.adjusted.values())
            warnings.warn(
                f"{len(plan.adjusted)} sample(s) have an RF phase within a zero "
                f"crossing of Cheetah's cavity model; moved by up to {shift:.3g} "
                "deg to where the energy gain is 0.2 % of the beam energy",
                PhysicsWarning,
                stacklevel=2,
            )

        failures = dict(plan.failures)
        for members in plan.groups(self.options.max_batch):
            self._track_group(plan, members, outputs, failures)
        return Batch(outputs=outputs, failures=failures)

    def _decode(self, settings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self.settings()]
        missing = sorted(set(names) - set(settings))
        unknown = sorted(set(settings) - set(names))
        if missing or unknown:
            raise SimulationError(
                f"the linac simulator takes the settings {names}; "
                f"missing {missing}, unknown {unknown}"
            )

        values = {name: np.asarray(settings[name], dtype=np.float64) for name in names}
        shapes = {name: v.shape for name, v in values.items()}
        if len(set(shapes.values())) != 1 or len(shapes["l1_phase"]) != 1:
            raise SimulationError(
                f"every setting must be a 1-D array of the same length; got {shapes}"
            )
        return values

    def _plan(self, values: Mapping[str, np.ndarray]) -> _Plan:
        """Voltages and Cheetah phases per sample; lost samples and phase
        adjustments found before any tracking."""
        plan = _Plan(phase={}, voltage={}, failures={}, adjusted={})
        for name, v in values.items():
            for i in np.flatnonzero(~np.isfinite(v)):
                plan.failures.setdefault(int(i), f"setting {name} is {v[i]}")

        energy = np.full(len(values["l1_phase"]), self.model.design.injector_energy)
        for name in LINACS:
            energy = self._plan_linac(plan, name, values, energy)
        return plan

    def _plan_linac(
        self,
        plan: _Plan,
        name: str,
        values: Mapping[str, np.ndarray],
        energy: np.ndarray,
    ) -> np.ndarray:
        """Add one linac to ``plan``; the reference energy (eV) after it."""
        model, failures, d = self.model, plan.failures, self.model.design
        percent = values[f"{name}_voltage"]
        psi = cheetah_phase(np.nan_to_num(values[f"{name}_phase"]))
        total = np.nan_to_num(model.nominal_voltage[name] * percent / 100.0)
        per_cavity = total / model.cavities(name)
        for i in np.flatnonzero(per_cavity <= 0):
            failures.setdefault(
                int(i), f"{name}_voltage must be positive; got {percent[i]} %"
            )

        # Keep each cavity's gain clear of Cheetah's ill-conditioned zero.
        with np.errstate(divide="ignore", invalid="ignore"):
            c_min = _MIN_RELATIVE_GAIN * energy / per_cavity
        for i in np.flatnonzero((c_min >= 1) & (per_cavity > 0)):
            failures.setdefault(
                int(i),
                f"{name}_voltage {percent[i]} % is too low for the cavity model: "
                "each structure must change the energy by at least 0.2 % of the "
                "beam energy",
            )
        close = (np.abs(np.cos(np.radians(psi))) < c_min) & (c_min < 1)
        for i in np.flatnonzero(close):
            shift = _shift_off_zero_crossing(float(psi[i]), float(c_min[i]))
            plan.adjusted[int(i)] = max(plan.adjusted.get(int(i), 0.0), abs(shift))
            psi[i] += shift
        plan.phase[name], plan.voltage[name] = psi, total

        # The reference particle gains V cos(phase) in every structure.
        energy = energy + total * np.cos(np.radians(psi))
        if name == "l1":
            energy += model.l1x_voltage * math.cos(math.radians(d.l1x_phase))
        floor = _MIN_ENERGY_FRACTION * d.injector_energy
        for i in np.flatnonzero(energy < floor):
            failures.setdefault(
                int(i),
                f"beam lost: reference energy falls to {energy[i]:.4g} eV in "
                f"{name.upper()}, below {floor:.4g} eV",
            )
        return energy

    def _track_group(
        self,
        plan: _Plan,
        members: np.ndarray,
        outputs: dict[str, np.ndarray],
        failures: dict[int, str],
    ) -> None:
        """Track samples that share gain signs; split the group if Cheetah
        raises, so that one broken sample cannot sink the others."""
        model = self.model
        phase = {k: self._tensor(plan.phase[k][members]) for k in LINACS}
        voltage = {k: self._tensor(plan.voltage[k][members]) for k in LINACS}
        try:
            beams = model.track(phase, voltage)
        except (RuntimeError, ValueError, AssertionError, ArithmeticError) as exc:
            if len(members) == 1:
                failures[int(members[0])] = (
                    f"tracking failed: {type(exc).__name__}: {exc}"
                )
                return
            log.warning(
                "linac tracking of %d samples raised %s; splitting the group",
                len(members),
                type(exc).__name__,
            )
            half = len(members) // 2
            self._track_group(plan, members[:half], outputs, failures)
            self._track_group(plan, members[half:], outputs, failures)
            return

        results, lost = self._diagnose(beams)
        for row, index in enumerate(members.tolist()):
            reason = lost[row] or _first_non_finite(results, row)
            if reason:
                failures[index] = reason
                continue
            for key, value in results.items():
                outputs[key][index] = value[row]

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        model = self.model
        return torch.as_tensor(values, dtype=model.dtype, device=model.device)

    def _diagnose(
        self, beams: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Outputs of every sample in a group, and why each one is lost ("" if not)."""
        model, o = self.model, self.options
        charge = o.bunch_charge / o.n_particles
        results: dict[str, torch.Tensor] = {}
        lost = [""] * beams["end"].particles.shape[0]

        for station in STATIONS:
            beam = beams[station]
            particles = beam.particles.to(torch.float64)
            energy = beam.energy.to(torch.float64).expand(particles.shape[:-2])
            where = _STATION_NAMES[station]
            for row, reason in enumerate(self._losses(particles, energy, where)):
                lost[row] = lost[row] or reason

            z, delta, mean_energy = diagnostics.longitudinal(
                particles, energy, model.mass
            )
            prefix = "" if station == "end" else f"{station}_"
            results[f"{prefix}energy"] = mean_energy
            results[f"{prefix}energy_spread"] = delta.std(dim=-1, correction=0)
            results[f"{prefix}bunch_length"] = z.std(dim=-1, correction=0)
            results[f"{prefix}peak_current"] = diagnostics.peak_current(z, charge)
            results[f"{prefix}chirp"] = diagnostics.chirp(z, delta)
            if station == "end":
                results.update(self._final_extras(particles, energy, z, delta))

        return {k: v.cpu().numpy() for k, v in results.items()}, lost

    def _losses(
        self, particles: torch.Tensor, energy: torch.Tensor, where: str
    ) -> list[str]:
        """Why each bunch is lost by station ``where`` ("" if it is not)."""
        mass = self.model.mass
        p0c = diagnostics.reference_momentum(energy, mass).unsqueeze(-1)
        stopped = (energy.unsqueeze(-1) + particles[..., 5] * p0c <= mass).sum(-1)
        finite = torch.isfinite(particles).flatten(-2).all(dim=-1)
        finite &= torch.isfinite(energy) & (energy > 0)

        reasons = []
        for n_stopped, ok in zip(stopped.tolist(), finite.tolist(), strict=True):
            if n_stopped:
                reasons.append(
                    f"beam lost: {n_stopped} particles decelerated to rest by {where}"
                )
            elif not ok:
                reasons.append(f"beam lost: non-finite coordinates by {where}")
            else:
                reasons.append("")
        return reasons

    def _final_extras(
        self,
        particles: torch.Tensor,
        energy: torch.Tensor,
        z: torch.Tensor,
        delta: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Transverse parameters, phase space image and current profile."""
        model, o = self.model, self.options
        extras = {}
        for plane in ("x", "y"):
            moments = diagnostics.transverse(particles, energy, model.mass, plane)
            for key, value in moments.items():
                extras[f"{key}_{plane}"] = value

        def edges(half_width: float, bins: int) -> torch.Tensor:
            return torch.linspace(
                -half_width, half_width, bins + 1, dtype=torch.float64, device=z.device
            )

        image = diagnostics.histogram_2d(
            z,
            delta,
            edges(o.lps_z_half_width, o.lps_bins),
            edges(o.lps_delta_half_width, o.lps_bins),
        )
        extras["lps"] = image / o.n_particles
        extras["current_profile"] = diagnostics.current_profile(
            z, edges(o.lps_z_half_width, o.current_bins), o.bunch_charge / o.n_particles
        )
        return extras


def _shift_off_zero_crossing(psi: float, c_min: float) -> float:
    """The smallest phase shift (deg) that makes ``|cos(psi)|`` equal
    ``c_min``, keeping the sign of the energy gain and of ``sin(psi)``."""
    rad = math.radians(psi)
    edge = math.degrees(math.acos(c_min))
    target = edge if math.cos(rad) >= 0 else 180.0 - edge
    target = math.copysign(target, math.sin(rad))
    return (target - psi + 180.0) % 360.0 - 180.0


def _centres(edges: np.ndarray) -> np.ndarray:
    centres: np.ndarray = 0.5 * (edges[1:] + edges[:-1])
    return centres


def _first_non_finite(results: Mapping[str, np.ndarray], row: int) -> str:
    for key, value in results.items():
        if not np.all(np.isfinite(value[row])):
            return f"non-finite {key}"
    return ""


__all__ = [
    "LCLS",
    "LINACS",
    "STATIONS",
    "LinacDesign",
    "LinacModel",
    "LinacOptions",
    "LinacSimulator",
    "import_cheetah",
]
