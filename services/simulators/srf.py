"""RF waveforms of a C100 cryomodule around a cavity trip.

CEBAF's C100 cryomodules hold eight 7-cell superconducting cavities at
1497 MHz.  When one trips, a waveform recorder keeps 17 signals of every
cavity for 8,192 samples at 0.2 ms, from -1536 ms to +102.2 ms around the
trigger.  This simulator makes such records, labelled with the fault type
and the faulted cavity, for training the trip classifier.

Each cavity is an RF envelope (baseband) model in the frame of the
reference, with a complex gradient ``E`` (MV/m)::

    dE/dt = (-(w12 + g_loss) + i dw) E + w12 (u_F - R_b I_b)

driven by the forward wave ``u_F`` (in gradient units: on resonance and
without beam, E = u_F), loaded by the beam current ``I_b`` (A), where
w12 = w0 / (2 Q_L) is the half bandwidth and ``dw`` the detuning (rad/s):
a static tuner offset, background microphonics, Lorentz-force detuning from
two mechanical modes driven by |E|^2 (and weakly by the neighbours' fields),
and whatever a fault adds.  A digital PI controller on I/Q holds ``E`` at
its set point through a drive with a limit; forward and reflected power
follow from u_F and E.  The fault physics is in
:mod:`wakefield.services.simulators.srf_faults`; the equations and the
parameter ranges in ``docs/srf.md``.

The model is integrated at the recorder's own step (0.2 ms) with an
exponential integrator (exact for the cavity over one step with the drive
held), vectorised over every cavity of every event of a batch, over a
window of the record (by default -409.6 ms to +101.6 ms) plus 20 ms to
settle; the samples kept are every ``decimation``-th of the recorder's.

Symbols: ``w0`` the angular RF frequency (rad/s), ``Q_L`` the loaded
quality factor, ``f12`` = w12 / 2 pi (Hz), ``k`` the coupling
(MV/m per sqrt(kW)) with P_f = (|u_F| / 2k)^2, ``K_L`` the Lorentz
coefficient (Hz / (MV/m)^2).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xarray as xr
from pydantic import Field, field_validator, model_validator

from wakefield.config import StrictModel
from wakefield.errors import SimulationError
from wakefield.simulator import Batch, Coordinate, Simulator
from wakefield.variables import Output, Setting

from .srf_faults import (
    FAULT_TYPES,
    N_CAVITIES,
    OMEGA_0,
    Perturbations,
    draw_perturbations,
)

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complexfloating[Any, Any]]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "CAVITY_LABELS",
    "CLASSIFIER_SIGNALS",
    "FAULT_TYPES",
    "RECORDED_SIGNALS",
    "SIGNALS",
    "CryomoduleSimulator",
    "RecordGrid",
    "SrfOptions",
    "simulate_trip_dataset",
]

F0 = 1497e6
"""RF frequency of a CEBAF cavity, Hz."""
R_OVER_Q = 868.0
"""Shunt impedance over Q of a C100 7-cell cavity, linac convention, ohm."""
ACTIVE_LENGTH = 0.7
"""Active length of a C100 cavity, m."""
NOMINAL_QL = 3e7
"""Nominal loaded quality factor of a C100 cavity."""
Q0 = 1e10
"""Intrinsic quality factor of a healthy cavity at 2.07 K."""

RECORD_START = -1536.0
"""Time of the recorder's first sample, ms."""
RECORD_STEP = 0.2
"""The recorder's sample spacing, ms."""
RECORD_SAMPLES = 8192
"""Samples per recorded signal."""
SETTLE = 20.0
"""Integration time before the window starts, for the loop to settle, ms."""
MARGIN = 100.0
"""Extra time integrated before the window, so that a record can be shifted
to a trip the interlock fired before the scheduled one, ms."""
TUNER_DEADBAND = 0.5
"""The resonance control keeps the static detuning within this many half
bandwidths (a detune angle of 27 deg); it acts over seconds, too slowly to
follow a fault."""
GRADIENT_LOW = 0.5
"""The interlock opens a cavity's RF switch below this fraction of its set
gradient."""

CAVITY_LABELS: tuple[str, ...] = (*(str(c) for c in range(1, 9)), "multiple")
"""Values of the cavity label, in the order of their integer codes."""

RECORDED_SIGNALS: tuple[str, ...] = (
    "IMES",
    "QMES",
    "GMES",
    "PMES",
    "IASK",
    "QASK",
    "GASK",
    "PASK",
    "CRFP",
    "CRFPP",
    "CRRP",
    "CRRPP",
    "GLDE",
    "PLDE",
    "DETA2",
    "CFQE2",
    "DFQES",
)
"""The 17 signals the recorder keeps per cavity, in its column order."""

SIGNALS: dict[str, tuple[str, str]] = {
    "GMES": ("MV/m", "measured accelerating gradient"),
    "PMES": ("deg", "measured phase of the field"),
    "GASK": ("1", "drive amplitude the field controller asks for"),
    "PASK": ("deg", "phase of the drive the field controller asks for"),
    "CRFP": ("kW", "forward power"),
    "CRRP": ("kW", "reflected power"),
    "DETA2": ("deg", "detune angle, field phase minus forward phase"),
    "CFQE2": ("Hz", "cavity frequency error, f12 tan(DETA2)"),
}
"""The signals this simulator makes: unit and long name."""

CLASSIFIER_SIGNALS: tuple[str, ...] = ("GMES", "GASK", "CRFP", "DETA2")
"""The four signals the trip classifier uses."""

SignalName = Literal["GMES", "PMES", "GASK", "PASK", "CRFP", "CRRP", "DETA2", "CFQE2"]
FaultName = Literal[
    "Controls Fault",
    "E_Quench",
    "Heat Riser Choke",
    "Microphonics",
    "Multi Cav turn off",
    "Quench_100ms",
    "Quench_3ms",
    "Single Cav Turn off",
]


class RecordGrid(StrictModel):
    """The samples kept of a record: a window of it, decimated, with the
    milliseconds around the trigger kept at the recorder's full rate.

    The default keeps every 4th sample (0.8 ms) from -409.6 ms to +101.6 ms
    (640 samples) and every sample (0.2 ms) from -12.8 ms to +12.8 ms, where
    a quench or a controls fault plays out within a millisecond or two:
    736 samples in all, 92 KiB per event for 4 signals of 8 cavities in
    float32.  The time axis is then not evenly spaced; :attr:`times` gives
    it.
    """

    start: float = -409.6
    """Time of the first sample kept, ms; one of the recorder's sample times."""
    samples: int = Field(default=640, ge=8)
    """Number of decimated samples kept (the full-rate window adds more)."""
    decimation: int = Field(default=4, ge=1, le=64)
    """Keep every n-th of the recorder's samples (0.2 ms apart)."""
    zoom: float = Field(default=12.8, ge=0.0, le=50.0)
    """Half width of the window around the trigger (t = 0) kept at the
    recorder's full rate, ms; a multiple of 0.2 ms; 0 keeps none."""

    @model_validator(mode="after")
    def _inside_record(self) -> RecordGrid:
        first = (self.start - RECORD_START) / RECORD_STEP
        if abs(first - round(first)) > 1e-6 or first < 0:
            raise ValueError(
                f"start {self.start} ms is not a sample time of the recorder "
                f"({RECORD_START} ms + k * {RECORD_STEP} ms, k >= 0)"
            )
        last = round(first) + (self.samples - 1) * self.decimation
        if last >= RECORD_SAMPLES:
            end = RECORD_START + (RECORD_SAMPLES - 1) * RECORD_STEP
            raise ValueError(
                f"{self.samples} samples every {self.step} ms from {self.start} ms "
                f"run past the record's end at {end:.1f} ms; "
                "lower samples or decimation, or start earlier"
            )
        steps = self.zoom / RECORD_STEP
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(
                f"zoom {self.zoom} ms is not a whole number of the recorder's "
                f"{RECORD_STEP} ms steps; use a multiple of {RECORD_STEP}"
            )
        return self

    @property
    def step(self) -> float:
        """Spacing of the decimated samples, ms."""
        return RECORD_STEP * self.decimation

    @property
    def first_index(self) -> int:
        """Index of the first sample kept in a full record."""
        return round((self.start - RECORD_START) / RECORD_STEP)

    @property
    def decimated(self) -> IntArray:
        """Indices of the decimated samples in a full 8,192-sample record."""
        return self.first_index + self.decimation * np.arange(self.samples)

    @property
    def indices(self) -> IntArray:
        """Indices of every sample kept in a full 8,192-sample record, in order."""
        coarse = self.decimated
        trigger = round(-RECORD_START / RECORD_STEP)
        half = round(self.zoom / RECORD_STEP)
        fine = np.arange(trigger - half, trigger + half + 1) if half else coarse[:0]
        fine = fine[(fine >= coarse[0]) & (fine <= coarse[-1])]
        return np.union1d(coarse, fine).astype(np.int64)

    @property
    def size(self) -> int:
        """Number of samples kept."""
        return int(self.indices.size)

    @property
    def times(self) -> FloatArray:
        """Times of the samples kept, ms, rounded to the recorder's 0.1 us."""
        return np.round(RECORD_START + RECORD_STEP * self.indices, 4)


class SrfOptions(StrictModel):
    """The record layout and the fault mix of the cryomodule simulator."""

    grid: RecordGrid = RecordGrid()
    """The window and decimation of the record that is kept."""
    signals: tuple[SignalName, ...] = ("GMES", "GASK", "CRFP", "DETA2")
    """Signals to keep, in this order along the ``signal`` dimension."""
    class_weights: Literal["uniform"] | dict[FaultName, float] = "uniform"
    """How often each fault type is drawn: ``uniform``, or a weight per fault
    type (types left out are never drawn), for a realistic imbalance."""
    trip_jitter: float = Field(default=3.0, ge=0.0, le=50.0)
    """Half width of the uniform spread of the trip around the trigger, ms."""
    chunk_size: int = Field(default=128, ge=1, le=4096)
    """Events integrated together; bounds memory (about 0.6 MB per event)."""

    @field_validator("signals")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"signals must be distinct and not empty; got {value}")
        return value

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, dict):
            if any(not (math.isfinite(w) and w >= 0) for w in value.values()):
                raise ValueError(f"class weights must be finite and >= 0; got {value}")
            if sum(value.values()) <= 0:
                raise ValueError("at least one class weight must be positive")
        return value

    def fault_probabilities(self) -> FloatArray:
        """Probability of each fault type, in the order of ``FAULT_TYPES``."""
        if isinstance(self.class_weights, str):
            return np.full(len(FAULT_TYPES), 1.0 / len(FAULT_TYPES))
        table = {str(name): w for name, w in self.class_weights.items()}
        weights = np.array([table.get(f, 0.0) for f in FAULT_TYPES], dtype=np.float64)
        return np.asarray(weights / weights.sum(), dtype=np.float64)


@dataclass
class _OperatingPoint:
    """Per-cavity constants of a batch, shape (events, 8) unless stated."""

    gradient: FloatArray  # set point, MV/m
    loaded_q: FloatArray
    detune: FloatArray  # static tuner offset seen at the start, Hz
    beam: FloatArray  # beam current, A, shape (events,)
    mic_amp: FloatArray  # background microphonics, Hz, (events, 8, 3)
    mic_freq: FloatArray  # Hz, (events, 8, 3)
    mic_phase: FloatArray  # rad, (events, 8, 3)
    lfd: FloatArray  # K_L of each mechanical mode, Hz/(MV/m)^2, (events, 8, 2)
    mode_freq: FloatArray  # Hz, (events, 8, 2)
    mode_q: FloatArray  # (events, 8, 2)
    coupling: FloatArray  # share of the neighbours' |E|^2 in the forcing
    kp: FloatArray  # proportional gain
    ki: FloatArray  # integral gain, 1/s
    headroom: FloatArray  # drive limit over the drive needed at the start
    leak: FloatArray  # amplitude leaking through the open RF switch
    ask_scale: FloatArray  # the GASK channel's calibration
    phase_offset: (
        FloatArray  # recorder's phase references of E and ask, rad, (events, 8, 2)
    )
    noise: FloatArray  # noise multiplier, shape (events,)

    @property
    def half_bandwidth(self) -> FloatArray:
        """f_1/2 = f0 / (2 Q_L), Hz."""
        return F0 / (2.0 * self.loaded_q)

    @property
    def coupling_k(self) -> FloatArray:
        """k = sqrt((R/Q) Q_L) / L in MV/m per sqrt(kW)."""
        return np.sqrt(R_OVER_Q * self.loaded_q) / ACTIVE_LENGTH * math.sqrt(1e3) / 1e6

    @property
    def beam_gradient(self) -> FloatArray:
        """(R/Q) Q_L I_b / L: the beam-induced gradient on resonance, MV/m."""
        return R_OVER_Q * self.loaded_q / ACTIVE_LENGTH * self.beam[:, None] / 1e6


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="gradient_mean",
        unit="MV/m",
        range=(8.0, 19.0),
        default=16.0,
        description="mean accelerating gradient of the cryomodule's cavities "
        "(each within +-15 % of it)",
    ),
    Setting(
        name="loaded_q_scale",
        unit="",
        range=(0.7, 1.3),
        default=1.0,
        description="loaded Q over the nominal 3e7 (each cavity within +-15 % of it)",
    ),
    Setting(
        name="detune_spread",
        unit="Hz",
        range=(0.0, 10.0),
        default=3.0,
        description="rms static detuning the tuners leave",
    ),
    Setting(
        name="microphonics",
        unit="Hz",
        range=(0.5, 6.0),
        default=2.0,
        description="rms background microphonics detuning",
    ),
    Setting(
        name="beam_current",
        unit="A",
        range=(0.0, 1e-4),
        default=2e-5,
        description="beam current through the cryomodule, summed over passes",
    ),
    Setting(
        name="noise_level",
        unit="",
        range=(0.0, 3.0),
        default=1.0,
        description="measurement noise relative to a typical C100 recorder",
    ),
)


class CryomoduleSimulator(Simulator):
    """Trip events of a C100 cryomodule: waveforms, fault type and cavity.

    One sample is one trip event.  The settings are the operating point of
    the cryomodule that a scan may vary (mean gradient, loaded Q, tuning,
    microphonics, beam current, noise); everything that is not an operating
    knob (the fault type and faulted cavity, each cavity's spread around the
    operating point, the controller's gains, the fault's own parameters, the
    trip time) is drawn from ``rng``, because a trip is not something an
    operator sets.  That keeps a scan small and every event a fair draw.
    """

    name = "srf-cavity"
    Options = SrfOptions
    options: SrfOptions

    def settings(self) -> list[Setting]:
        return list(SETTINGS)

    def outputs(self) -> list[Output]:
        grid = self.options.grid
        signals = len(self.options.signals)
        cavity, per_cavity = ("cavity",), (N_CAVITIES,)
        return [
            Output(
                name="waveform",
                unit="",
                dtype="float32",
                dims=("cavity", "signal", "time"),
                shape=(N_CAVITIES, signals, grid.size),
                description="recorded signals; each signal's unit is in "
                "the signal coordinate's description",
            ),
            Output(
                name="fault",
                dtype="int32",
                categories=FAULT_TYPES,
                description="fault type of the trip",
            ),
            Output(
                name="cavity_label",
                dtype="int32",
                categories=CAVITY_LABELS,
                description="the cavity that faulted first, or multiple",
            ),
            Output(
                name="trip_time",
                unit="ms",
                description="time the interlock switched the RF off, "
                "relative to the recorder's trigger",
            ),
            Output(
                name="faulted",
                dtype="bool",
                dims=cavity,
                shape=per_cavity,
                description="cavities whose RF the interlock switched off",
            ),
            Output(
                name="gradient",
                unit="MV/m",
                dims=cavity,
                shape=per_cavity,
                description="gradient set point",
            ),
            Output(
                name="loaded_q",
                unit="",
                dims=cavity,
                shape=per_cavity,
                description="loaded quality factor",
            ),
        ]

    def coordinates(self) -> dict[str, Coordinate]:
        units = "; ".join(f"{s} in {SIGNALS[s][0]}" for s in self.options.signals)
        return {
            "cavity": Coordinate(
                np.arange(1, N_CAVITIES + 1), "", "cavity number in the cryomodule"
            ),
            "signal": Coordinate(np.array(self.options.signals), "", units),
            "time": Coordinate(
                self.options.grid.times, "ms", "time relative to the recorder's trigger"
            ),
        }

    def simulate(
        self, settings: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> Batch:
        n = _batch_size(settings)
        fault = rng.choice(
            len(FAULT_TYPES), size=n, p=self.options.fault_probabilities()
        )
        cavity = rng.integers(0, N_CAVITIES, n)
        return self.simulate_faults(settings, fault, cavity, rng)

    def simulate_faults(
        self,
        settings: Mapping[str, np.ndarray],
        fault: Sequence[int] | IntArray,
        cavity: Sequence[int] | IntArray,
        rng: np.random.Generator,
    ) -> Batch:
        """Trip events of given fault codes and faulted cavities (0 to 7).

        For Multi Cav turn off the cavities are drawn and ``cavity`` is
        ignored.  Otherwise as :meth:`simulate`.
        """
        fault = np.asarray(fault, dtype=np.int64)
        cavity = np.asarray(cavity, dtype=np.int64)
        n = _batch_size(settings)
        if fault.shape != (n,) or cavity.shape != (n,):
            raise SimulationError(
                f"fault and cavity need one entry per sample ({n}); "
                f"got shapes {fault.shape} and {cavity.shape}"
            )
        if fault.min(initial=0) < 0 or fault.max(initial=0) >= len(FAULT_TYPES):
            raise SimulationError(f"fault codes must lie in 0..{len(FAULT_TYPES) - 1}")
        if cavity.min(initial=0) < 0 or cavity.max(initial=0) >= N_CAVITIES:
            raise SimulationError(f"cavity indices must lie in 0..{N_CAVITIES - 1}")

        values = {
            s.name: np.broadcast_to(np.asarray(settings[s.name], float), (n,))
            for s in SETTINGS
        }
        parts = []
        size = self.options.chunk_size
        for begin in range(0, n, size):
            chunk = slice(begin, min(begin + size, n))
            parts.append(
                self._simulate_chunk(
                    {k: v[chunk] for k, v in values.items()},
                    fault[chunk],
                    cavity[chunk],
                    rng,
                )
            )
        outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return Batch(outputs=outputs, failures=_non_finite(outputs["waveform"]))

    def _simulate_chunk(
        self,
        settings: dict[str, FloatArray],
        fault: IntArray,
        cavity: IntArray,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        grid = self.options.grid
        n = len(fault)
        settle = round(SETTLE / RECORD_STEP)
        margin = math.ceil(MARGIN / grid.step)
        kept = margin + grid.samples
        steps = settle + (kept - 1) * grid.decimation + 1
        start = grid.start - margin * grid.step - SETTLE
        t = start + RECORD_STEP * np.arange(steps, dtype=np.float64)

        jitter = self.options.trip_jitter
        scheduled = rng.uniform(-jitter, jitter, n) if jitter > 0 else np.zeros(n)
        op = _draw_operating_point(settings, rng)
        pert = draw_perturbations(
            t, fault, cavity, scheduled, op.half_bandwidth, op.headroom, rng
        )
        # Integration steps whose samples the record may keep: the decimated
        # ones, and every step of the full-rate window and of the margin
        # before it (a shifted record reads up to MARGIN earlier).
        offset = settle + margin * grid.decimation - grid.first_index
        wanted = grid.indices + offset
        keep = settle + grid.decimation * np.arange(kept)
        if grid.zoom:
            trigger_step = round(-RECORD_START / RECORD_STEP) + offset
            half = round(grid.zoom / RECORD_STEP)
            fine = np.arange(
                trigger_step - half - margin * grid.decimation, trigger_step + half + 1
            )
            keep = np.union1d(keep, fine[(fine >= 0) & (fine < steps)])
        waveform, off = _integrate(
            op, pert, scheduled, t, keep, self.options.signals, rng
        )

        # The recorder triggers on the first RF switch to open.  Where the
        # gradient-low interlock fired before the scheduled trip, shift the
        # record so that the trigger keeps its place (at most MARGIN).
        trigger = off.reshape(n, N_CAVITIES).min(axis=1)
        shift = np.clip(np.round((scheduled - trigger) / grid.step), 0, margin)
        shift = shift.astype(np.int64)
        read = wanted[None, :] - (shift * grid.decimation)[:, None]
        index = np.searchsorted(keep, read)
        waveform = np.take_along_axis(waveform, index[:, None, None, :], axis=-1)
        early = int((shift > 0).sum())
        if early:
            log.debug("%s of %s trips fired early on low gradient", early, n)

        multiple = fault == FAULT_TYPES.index("Multi Cav turn off")
        faulted = pert.faulted | np.isfinite(off.reshape(n, N_CAVITIES))
        return {
            "waveform": waveform,
            "fault": fault.astype(np.int32),
            "cavity_label": np.where(multiple, N_CAVITIES, cavity).astype(np.int32),
            "trip_time": np.where(
                np.isfinite(trigger), trigger + shift * grid.step, np.nan
            ),
            "faulted": faulted,
            "gradient": op.gradient,
            "loaded_q": op.loaded_q,
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "simulator": self.name,
            "model": "RF envelope of 8 C100 cavities with PI field control, "
            "Lorentz-force detuning and eight fault types",
            "f0_hz": F0,
            "r_over_q_ohm": R_OVER_Q,
            "active_length_m": ACTIVE_LENGTH,
            "nominal_loaded_q": NOMINAL_QL,
        }


def _batch_size(settings: Mapping[str, np.ndarray]) -> int:
    missing = [s.name for s in SETTINGS if s.name not in settings]
    if missing:
        raise SimulationError(
            f"settings {missing} are missing; the srf-cavity simulator needs "
            f"{[s.name for s in SETTINGS]}"
        )
    sizes = {np.asarray(settings[s.name]).size for s in SETTINGS}
    sizes.discard(1)
    if len(sizes) > 1:
        raise SimulationError(f"settings have different lengths {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _non_finite(waveform: np.ndarray) -> dict[int, str]:
    bad = ~np.isfinite(waveform).reshape(len(waveform), -1).all(axis=1)
    return {int(i): "non-finite waveform value" for i in np.flatnonzero(bad)}


def _draw_operating_point(
    settings: dict[str, FloatArray], rng: np.random.Generator
) -> _OperatingPoint:
    """Each cavity's operating point around the cryomodule's settings."""
    n = len(settings["gradient_mean"])
    shape = (n, N_CAVITIES)

    def around(name: str, spread: float) -> FloatArray:
        return settings[name][:, None] * rng.uniform(1 - spread, 1 + spread, shape)

    # Background microphonics: three lines whose rms adds up to the setting.
    weights = rng.dirichlet(np.ones(3), shape)
    rms = around("microphonics", 0.5)
    # Lorentz force: K_L shared by a fast mode and a slow mode.
    k_l = rng.uniform(0.8, 1.6, shape)
    fast = rng.uniform(0.4, 0.8, shape)
    loaded_q = NOMINAL_QL * around("loaded_q_scale", 0.15)
    # The resonance control moves a tuner that leaves the deadband.
    deadband = TUNER_DEADBAND * F0 / (2.0 * loaded_q)
    offset = settings["detune_spread"][:, None] * rng.standard_normal(shape)
    return _OperatingPoint(
        gradient=np.clip(around("gradient_mean", 0.15), 4.0, 21.0),
        loaded_q=loaded_q,
        detune=np.clip(offset, -deadband, deadband),
        beam=settings["beam_current"],
        mic_amp=rms[..., None] * np.sqrt(2.0 * weights),
        mic_freq=rng.uniform(3.0, 60.0, (*shape, 3)),
        mic_phase=rng.uniform(0.0, 2.0 * math.pi, (*shape, 3)),
        lfd=np.stack([k_l * fast, k_l * (1.0 - fast)], axis=-1),
        mode_freq=np.stack(
            [rng.uniform(120.0, 250.0, shape), rng.uniform(15.0, 40.0, shape)], axis=-1
        ),
        mode_q=np.stack(
            [rng.uniform(20.0, 80.0, shape), rng.uniform(5.0, 20.0, shape)], axis=-1
        ),
        coupling=rng.uniform(0.0, 0.03, shape),
        kp=rng.uniform(20.0, 40.0, shape),
        ki=rng.uniform(20.0, 40.0, shape)
        * 2.0
        * math.pi
        * rng.uniform(50.0, 150.0, shape),
        headroom=rng.uniform(1.3, 2.0, shape),
        leak=rng.uniform(0.001, 0.01, shape),
        ask_scale=rng.uniform(1.0, 1.6, shape),
        phase_offset=rng.uniform(-math.pi, math.pi, (*shape, 2)),
        noise=settings["noise_level"],
    )


def _clip_magnitude(z: ComplexArray, limit: FloatArray) -> ComplexArray:
    magnitude = np.abs(z)
    return z * np.minimum(1.0, limit / np.maximum(magnitude, 1e-12))


def _neighbour_sum(power: FloatArray, n: int) -> FloatArray:
    """|E|^2 of each cavity's two neighbours in the cryomodule, summed."""
    p = power.reshape(n, N_CAVITIES)
    out = np.zeros_like(p)
    out[:, 1:] += p[:, :-1]
    out[:, :-1] += p[:, 1:]
    return out.reshape(-1)


def _integrate(
    op: _OperatingPoint,
    pert: Perturbations,
    scheduled: FloatArray,
    t: FloatArray,
    keep: IntArray,
    signals: Sequence[str],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], FloatArray]:
    """Integrate every cavity of a batch.

    Returns the kept samples of each signal, shape (events, 8, signals,
    kept), and the time each cavity's RF switch opened (ms; inf if never).
    """
    n = len(scheduled)
    steps = len(t)
    dt = RECORD_STEP * 1e-3

    # Flatten (event, cavity) to one axis; per-step arrays as (step, cavity).
    def flat(a: np.ndarray) -> np.ndarray:
        return (
            np.ascontiguousarray(a.reshape(n * N_CAVITIES, -1).T)
            if a.ndim == 3
            else a.reshape(-1)
        )

    e_set = flat(op.gradient)
    w12 = OMEGA_0 / (2.0 * flat(op.loaded_q))
    k = flat(op.coupling_k)
    beam = flat(op.beam_gradient)
    detune_fault, loss, ask_fault, loop_fault, hold = (
        flat(pert.detune),
        flat(pert.loss),
        flat(pert.ask),
        flat(pert.loop),
        flat(pert.hold),
    )
    rf_on = flat(pert.rf_on)
    fe_rate, fe_barrier = flat(pert.fe_rate), flat(pert.fe_barrier)
    fe_load = np.exp(1j * flat(pert.fe_phase))
    fe_onset, fe_noise = flat(pert.fe_onset), flat(pert.fe_noise)
    kp, ki_dt = flat(op.kp), flat(op.ki) * dt
    leak, coupling = flat(op.leak), flat(op.coupling)
    lfd = op.lfd.reshape(-1, 2)
    w_m = 2.0 * math.pi * op.mode_freq.reshape(-1, 2)
    damping = w_m / op.mode_q.reshape(-1, 2)

    # Background microphonics, Hz, (step, cavity).
    mic = np.einsum(
        "ck,tck->tc",
        op.mic_amp.reshape(-1, 3),
        np.sin(
            2.0 * math.pi * op.mic_freq.reshape(1, -1, 3) * t[:, None, None] * 1e-3
            + op.mic_phase.reshape(1, -1, 3)
        ),
    )

    # Steady state at the first step: the field at its set point, the
    # mechanical modes at rest under it, and the drive that holds it.
    e = e_set.astype(complex)
    forcing = e_set**2 + coupling * _neighbour_sum(e_set**2, n)
    x = -lfd * forcing[:, None]
    v = np.zeros_like(x)
    tuner = flat(op.detune) - x.sum(axis=1)
    dw0 = 2.0 * math.pi * (flat(op.detune) + mic[0] + detune_fault[0])
    integ = e_set * (1.0 + loss[0] / w12 - 1j * dw0 / w12) + beam
    u_limit = flat(op.headroom) * np.abs(integ)
    ask = integ.copy()

    # Measurement noise: the pickup's feeds the controller at every step.
    noise = np.repeat(op.noise, N_CAVITIES)
    sigma_e = 4e-4 * noise * e_set
    pickup = sigma_e * (
        rng.standard_normal((steps, n * N_CAVITIES))
        + 1j * rng.standard_normal((steps, n * N_CAVITIES))
    )
    burst = rng.standard_normal((steps, n * N_CAVITIES))

    record: dict[str, list[Any]] = {
        "em": [],
        "live": [],
        "ask": [],
        "fwd": [],
        "field": [],
    }
    keep_set = set(int(i) for i in keep)
    off = np.full(e.shape, np.inf)
    for s in range(steps):
        fe_on = t[s] >= fe_onset
        e_meas = e + pickup[s] + fe_on * fe_noise * e_set * burst[s]

        # The interlock: scheduled by the fault, or on low gradient.
        closed = rf_on[s] & np.isinf(off) & (np.abs(e_meas) >= GRADIENT_LOW * e_set)
        off = np.where(~closed & np.isinf(off), t[s], off)
        # Fast shutdown: the beam stops as soon as any RF switch has opened.
        beam_on = ~np.isfinite(off).reshape(n, N_CAVITIES).any(axis=1)
        beam_now = beam * np.repeat(beam_on, N_CAVITIES)

        # PI controller on I/Q with a limited output; the drive chain after it.
        # A controller at fault: its error turned by a wrong loop phase, its
        # output frozen, or its output stage putting out less than computed.
        error = (e_set - e_meas) * loop_fault[s]
        frozen = hold[s]
        integ = np.where(frozen, integ, _clip_magnitude(integ + ki_dt * error, u_limit))
        command = _clip_magnitude(integ + kp * error, u_limit) * ask_fault[s]
        ask = np.where(frozen, ask, command)
        forward = ask * np.where(closed, 1.0, leak)
        if s in keep_set:
            record["em"].append(e_meas)
            record["live"].append(~frozen)
            record["ask"].append(ask)
            record["fwd"].append(forward)
            record["field"].append(e)

        # Cavity: exact for one step with the drive held.
        amplitude = np.maximum(np.abs(e), 1e-6)
        fe = (
            fe_on
            * fe_rate
            * (amplitude / e_set) ** 2.5
            * np.exp(np.minimum(fe_barrier * (1.0 / e_set - 1.0 / amplitude), 0.0))
        )
        dw = 2.0 * math.pi * (tuner + x.sum(axis=1) + mic[s] + detune_fault[s])
        lam = -(w12 + loss[s]) - fe * fe_load + 1j * dw
        a = np.exp(lam * dt)
        e = a * e + (a - 1.0) / lam * w12 * (forward - beam_now)

        # Lorentz-force detuning: two modes driven by |E|^2 (semi-implicit).
        power = np.abs(e) ** 2
        forcing = power + coupling * _neighbour_sum(power, n)
        v += dt * (-(w_m**2) * (x + lfd * forcing[:, None]) - damping * v)
        x += dt * v

    waveform = _signals(op, record, noise, k, signals, rng)
    return waveform.reshape(n, N_CAVITIES, len(signals), len(keep)), off


def _signals(
    op: _OperatingPoint,
    record: dict[str, list[Any]],
    noise: FloatArray,
    k: FloatArray,
    signals: Sequence[str],
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """The recorder's signals from the kept samples, with their own noise.

    The fluctuation of the drive (GASK, and the forward and reflected power
    that follow it) is the loop answering the pickup's wide-band noise, which
    a model stepped at 0.2 ms cannot resolve: it is drawn here, 3 % (drive)
    and 4 % (power) times the noise level, and falls to a tenth of that
    while the controller's output is frozen.
    """
    em, ask, fwd, field = (
        np.stack(record[key], axis=-1) for key in ("em", "ask", "fwd", "field")
    )
    shape = em.shape
    noise = noise[:, None]
    jitter = noise * np.where(np.stack(record["live"], axis=-1), 1.0, 0.1)
    offset = op.phase_offset.reshape(-1, 2)

    def power_noise(p: FloatArray) -> FloatArray:
        relative = 1.0 + 0.04 * jitter * rng.standard_normal(shape)
        return np.abs(p * relative + 0.003 * noise * rng.standard_normal(shape))

    # The forward coupler's phase is measured with its own noise.
    fwd_phase = np.angle(fwd) + np.radians(1.5) * noise * rng.standard_normal(shape)
    deta = np.degrees(np.angle(np.exp(1j * (np.angle(em) - fwd_phase))))
    f12 = (F0 / (2.0 * op.loaded_q)).reshape(-1)[:, None]
    wrap = np.exp(1j * offset[:, :1])
    values = {
        "GMES": np.abs(em),
        "PMES": np.degrees(np.angle(em * wrap)),
        "GASK": (
            op.ask_scale.reshape(-1)[:, None]
            * np.abs(ask)
            / (2.0 * k[:, None])
            * (1.0 + 0.03 * jitter * rng.standard_normal(shape))
        ),
        "PASK": np.degrees(np.angle(ask * np.exp(1j * offset[:, 1:]))),
        "CRFP": power_noise(np.abs(fwd / (2.0 * k[:, None])) ** 2),
        "CRRP": power_noise(np.abs(field / k[:, None] - fwd / (2.0 * k[:, None])) ** 2),
        "DETA2": deta,
        "CFQE2": f12 * np.tan(np.radians(deta)),
    }
    return np.stack([values[s] for s in signals], axis=1).astype(np.float32)


def simulate_trip_dataset(
    n_events: int,
    *,
    seed: int,
    options: SrfOptions | None = None,
    settings: Mapping[str, float] | None = None,
) -> xr.Dataset:
    """A labelled dataset of simulated trip events, laid out as the
    simulation service writes it (dims ``sample``, ``cavity``, ``signal``,
    ``time``).

    Settings named in ``settings`` are held at that value; the others are
    drawn uniformly within their ranges, one draw per event.
    """
    rng = np.random.default_rng(seed)
    simulator = CryomoduleSimulator(options)
    fixed = dict(settings or {})
    unknown = sorted(set(fixed) - {s.name for s in SETTINGS})
    if unknown:
        raise SimulationError(
            f"unknown settings {unknown}; the srf-cavity simulator has "
            f"{[s.name for s in SETTINGS]}"
        )
    values = {
        s.name: np.full(n_events, fixed[s.name])
        if s.name in fixed
        else rng.uniform(s.low, s.high, n_events)
        for s in SETTINGS
    }
    batch = simulator.simulate(values, rng)
    log.info("simulated %s trip events (seed %s)", n_events, seed)
    return batch_to_dataset(simulator, batch, values)


def batch_to_dataset(
    simulator: CryomoduleSimulator, batch: Batch, settings: Mapping[str, np.ndarray]
) -> xr.Dataset:
    """One xarray Dataset of a batch, with coordinates, units and categories."""
    coords = {
        name: xr.Variable(name, c.values, {"units": c.unit, "long_name": c.description})
        for name, c in simulator.coordinates().items()
    }
    data: dict[str, xr.Variable] = {}
    for out in simulator.outputs():
        attrs: dict[str, Any] = {"units": out.unit, "long_name": out.description}
        if out.categories:
            attrs["categories"] = list(out.categories)
        data[out.name] = xr.Variable(
            ("sample", *out.dims), batch.outputs[out.name], attrs
        )
    for s in SETTINGS:
        data[s.name] = xr.Variable(
            "sample",
            np.asarray(settings[s.name], float),
            {"units": s.unit, "long_name": s.description},
        )
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["simulator"] = simulator.name
    return ds
