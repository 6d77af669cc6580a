"""The eight trip types of a C100 cryomodule, as perturbations of the cavities.

Each fault type is written as what physically changes in the faulted cavity
or cavities, as a function of time around the trip; the envelope model in
:mod:`wakefield.services.simulators.srf` then integrates the field, the
field controller and the Lorentz-force detuning through those changes, so
the waveforms follow from the physics rather than being drawn as shapes.

Every fault ends the same way: the RF interlock opens the faulted cavity's
RF switch at the trip time ``t_f`` (ms, relative to the recorder's trigger).
The onset of the physics that leads there is drawn relative to ``t_f``; the
equations and the ranges are in ``docs/srf.md``.

The perturbations, per event, cavity and integration step:

``detune``   extra detuning, Hz (helium pressure, growing microphonics)
``loss``     extra decay rate of the field from wall losses, 1/s (quench)
``drive``    complex gain of the drive chain after the controller (1 healthy)
``rf_on``    the RF switch: False once the interlock has tripped
``fe_*``     a field-emission burst: its loss rate at the set gradient (1/s),
             its Fowler-Nordheim barrier (MV/m), the phase of its loading
             (rad), its onset (ms) and the pickup noise it causes (relative)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complexfloating[Any, Any]]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

N_CAVITIES = 8
"""Cavities in a C100 cryomodule."""

FAULT_TYPES: tuple[str, ...] = (
    "Controls Fault",
    "E_Quench",
    "Heat Riser Choke",
    "Microphonics",
    "Multi Cav turn off",
    "Quench_100ms",
    "Quench_3ms",
    "Single Cav Turn off",
)
"""The fault types, in the order of their integer codes."""

(
    CONTROLS_FAULT,
    E_QUENCH,
    HEAT_RISER_CHOKE,
    MICROPHONICS,
    MULTI_CAV_TURN_OFF,
    QUENCH_100MS,
    QUENCH_3MS,
    SINGLE_CAV_TURN_OFF,
) = range(len(FAULT_TYPES))

OMEGA_0 = 2.0 * math.pi * 1497e6
"""Angular RF frequency of a CEBAF cavity, rad/s."""


@dataclass(frozen=True)
class Trips:
    """The events of one fault type in a batch, and their faulted cavities."""

    events: IntArray
    """Index of each event in the batch."""
    cavity: IntArray
    """Its faulted cavity, 0 to 7."""
    t_f: FloatArray
    """The time the interlock is scheduled to trip, ms."""
    f_half: FloatArray
    """The faulted cavity's half bandwidth f_1/2, Hz."""
    headroom: FloatArray
    """Its drive limit over the drive it needs when healthy."""


@dataclass
class Perturbations:
    """What the faults change, per event, cavity and step (see module doc)."""

    detune: FloatArray
    loss: FloatArray
    drive: ComplexArray
    rf_on: BoolArray
    fe_rate: FloatArray
    fe_barrier: FloatArray
    fe_phase: FloatArray
    fe_onset: FloatArray
    fe_noise: FloatArray
    faulted: BoolArray

    @classmethod
    def healthy(cls, n_events: int, n_steps: int) -> Perturbations:
        """No fault anywhere: the arrays every fault then writes into."""
        shape = (n_events, N_CAVITIES, n_steps)
        cavities = (n_events, N_CAVITIES)
        return cls(
            detune=np.zeros(shape, dtype=np.float32),
            loss=np.zeros(shape, dtype=np.float32),
            drive=np.ones(shape, dtype=np.complex64),
            rf_on=np.ones(shape, dtype=bool),
            fe_rate=np.zeros(cavities),
            fe_barrier=np.ones(cavities),
            fe_phase=np.zeros(cavities),
            fe_onset=np.full(cavities, np.inf),
            fe_noise=np.zeros(cavities),
            faulted=np.zeros(cavities, dtype=bool),
        )


def draw_perturbations(
    t: FloatArray,
    fault: IntArray,
    cavity: IntArray,
    trip_time: FloatArray,
    half_bandwidth: FloatArray,
    headroom: FloatArray,
    rng: np.random.Generator,
) -> Perturbations:
    """The perturbations of a batch of trip events.

    ``t`` is the integration time axis (ms); ``fault`` the fault code and
    ``cavity`` the faulted cavity (0 to 7) of each event; ``trip_time`` the
    time the interlock opens the RF switch (ms); ``half_bandwidth`` the
    cavities' half bandwidth f_1/2 (Hz) and ``headroom`` their drive limit
    over the drive they need when healthy, both of shape (events, 8).
    """
    p = Perturbations.healthy(len(fault), len(t))
    makers = {
        CONTROLS_FAULT: _controls_fault,
        E_QUENCH: _e_quench,
        HEAT_RISER_CHOKE: _heat_riser_choke,
        MICROPHONICS: _microphonics,
        MULTI_CAV_TURN_OFF: _multi_cav_turn_off,
        QUENCH_100MS: _quench_100ms,
        QUENCH_3MS: _quench_3ms,
        SINGLE_CAV_TURN_OFF: _rf_off,
    }
    for code, make in makers.items():
        events = np.flatnonzero(fault == code)
        if events.size:
            c = cavity[events]
            trips = Trips(
                events,
                c,
                trip_time[events],
                half_bandwidth[events, c],
                headroom[events, c],
            )
            make(p, t, trips, rng)
    return p


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> FloatArray:
    return rng.uniform(low, high, n)


def _log_uniform(
    rng: np.random.Generator, low: float, high: float, n: int
) -> FloatArray:
    return np.exp(rng.uniform(math.log(low), math.log(high), n))


def _beyond_limit(headroom: FloatArray, margin: FloatArray) -> FloatArray:
    """Detuning, in half bandwidths, that needs ``margin`` times the drive limit.

    Off resonance by x half bandwidths a cavity needs sqrt(1 + x^2) times its
    drive on resonance; the limit is ``headroom`` times that.
    """
    return np.sqrt(np.maximum((headroom * margin) ** 2 - 1.0, 0.0))


def _rf_off(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """The interlock opens the RF switch of one cavity at ``t_f``."""
    events, cavity, t_f = trips.events, trips.cavity, trips.t_f
    p.rf_on[events, cavity, :] &= t[None, :] < t_f[:, None]
    p.faulted[events, cavity] = True


def _multi_cav_turn_off(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """RF off in 2 to 8 cavities at once, within 0.4 ms of each other."""
    events, t_f = trips.events, trips.t_f
    n = len(events)
    count = rng.integers(2, N_CAVITIES + 1, n)
    order = rng.permuted(np.tile(np.arange(N_CAVITIES), (n, 1)), axis=1)
    chosen = np.argsort(order, axis=1) < count[:, None]
    t_off = t_f[:, None] + rng.uniform(0.0, 0.4, (n, N_CAVITIES))

    off = t[None, None, :] >= t_off[:, :, None]
    p.rf_on[events] &= ~(off & chosen[:, :, None])
    p.faulted[events] = chosen


def _quench_3ms(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """A fast thermal quench: Q0 collapses within about a millisecond.

    A normal-conducting zone spreads with time constant ``tau_n`` from the
    onset ``t_q`` and drives Q0 down to ``Q_q`` (2e6 to 8e6), so the field
    decays in about 3 ms, faster than the cavity's own time constant; the
    quench detection trips the RF 0.4 to 2 ms after the onset.
    """
    events, cavity, t_f = trips.events, trips.cavity, trips.t_f
    n = len(events)
    t_q = t_f - _uniform(rng, 0.4, 2.0, n)
    q_q = _log_uniform(rng, 2e6, 8e6, n)
    tau_n = _uniform(rng, 0.2, 1.0, n)

    since = np.clip(t[None, :] - t_q[:, None], 0.0, None)
    spread = 1.0 - np.exp(-since / tau_n[:, None])
    p.loss[events, cavity, :] += (OMEGA_0 / (2.0 * q_q))[:, None] * spread
    _rf_off(p, t, trips, rng)


def _quench_100ms(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """A slow thermal runaway: Q0 falls over 40 to 160 ms before the trip.

    The wall-loss rate grows as (exp(kappa x) - 1) / (exp(kappa) - 1) in
    x = (t - t_on) / D.  The controller raises the forward power until its
    drive limit h (times the healthy drive) no longer holds the field; at the
    trip the loss rate has reached w12 (h m - 1), so the saturated drive
    holds only 1/m of the gradient (m from 1.05 to 1.6): the gradient sags
    in the last milliseconds and the interlock trips.
    """
    events, cavity, t_f, f_half, headroom = (
        trips.events,
        trips.cavity,
        trips.t_f,
        trips.f_half,
        trips.headroom,
    )
    n = len(events)
    duration = _uniform(rng, 40.0, 160.0, n)
    final = 2.0 * math.pi * f_half * (headroom * _uniform(rng, 1.05, 1.6, n) - 1.0)
    kappa = _uniform(rng, 2.0, 5.0, n)[:, None]

    x = np.clip((t[None, :] - (t_f - duration)[:, None]) / duration[:, None], 0.0, 1.0)
    runaway = np.expm1(kappa * x) / np.expm1(kappa)
    p.loss[events, cavity, :] += final[:, None] * runaway
    _rf_off(p, t, trips, rng)


def _e_quench(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """A field-emission burst: electron loading that depends on the field.

    An emitter switches on 0.5 to 8 ms before the trip.  Its dark current
    follows Fowler-Nordheim, so the power it takes out of the field, as a
    decay rate, is gamma_fe (E / E_set)^2.5 exp(B (1/E_set - 1/E)): large at
    the set gradient (1,500 to 6,000 1/s), negligible at half of it.  The
    field falls fast to where the saturated drive balances the loading, not
    to zero; the electrons' loading has a reactive part (phase within
    +-25 deg) and their hits make the pickup noisy.
    """
    events, cavity, t_f = trips.events, trips.cavity, trips.t_f
    n = len(events)
    p.fe_onset[events, cavity] = t_f - _uniform(rng, 0.5, 8.0, n)
    p.fe_rate[events, cavity] = _uniform(rng, 1500.0, 6000.0, n)
    p.fe_barrier[events, cavity] = _uniform(rng, 40.0, 120.0, n)
    p.fe_phase[events, cavity] = np.radians(_uniform(rng, -25.0, 25.0, n))
    p.fe_noise[events, cavity] = _uniform(rng, 0.01, 0.05, n)
    _rf_off(p, t, trips, rng)


def _microphonics(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """A mechanical mode rings up and detunes the cavity periodically.

    Detuning A(t) sin(2 pi f_m t + phi) at f_m from 8 to 50 Hz, with A
    growing as exp((t - t_f) / tau_g) (tau_g 30 to 150 ms) and ringing down
    slowly (200 ms) after the trip.  At the trip A reaches the detuning the
    drive limit can no longer hold, f12 sqrt((h m)^2 - 1) with m from 1 to
    1.6, so the field dips at the detuning peaks of the last cycles.
    """
    events, cavity, t_f, f_half, headroom = (
        trips.events,
        trips.cavity,
        trips.t_f,
        trips.f_half,
        trips.headroom,
    )
    n = len(events)
    f_m = _uniform(rng, 8.0, 50.0, n)[:, None]
    peak = (f_half * _beyond_limit(headroom, _uniform(rng, 1.0, 1.6, n)))[:, None]
    tau_g = _uniform(rng, 30.0, 150.0, n)[:, None]
    phase = rng.uniform(0.0, 2.0 * math.pi, n)[:, None]

    since = t[None, :] - t_f[:, None]
    envelope = np.exp(np.where(since < 0.0, since / tau_g, -since / 200.0))
    wave = np.sin(2.0 * math.pi * f_m * t[None, :] * 1e-3 + phase)
    p.detune[events, cavity, :] += peak * envelope * wave
    _rf_off(p, t, trips, rng)


def _heat_riser_choke(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """A choked heat riser: helium pressure rises and detunes the cavity.

    The bath pressure rises from t_on (0.2 to 1.5 s before the trip) with
    time constant tau_p (150 to 600 ms); the detuning df/dp dp follows it,
    with either sign, and reaches f12 sqrt((h m)^2 - 1) at the trip (m from
    1 to 1.25), just past what the drive limit holds: a detune angle of
    40 to 68 deg.  Neighbouring cavities feel up to 15 % of the pressure.
    """
    events, cavity, t_f, f_half, headroom = (
        trips.events,
        trips.cavity,
        trips.t_f,
        trips.f_half,
        trips.headroom,
    )
    n = len(events)
    lead = _uniform(rng, 200.0, 1500.0, n)[:, None]
    tau_p = _uniform(rng, 150.0, 600.0, n)[:, None]
    sign = rng.choice([-1.0, 1.0], n)
    final = (sign * f_half * _beyond_limit(headroom, _uniform(rng, 1.0, 1.25, n)))[
        :, None
    ]

    since = np.clip(t[None, :] - t_f[:, None] + lead, 0.0, None)
    drift = final * -np.expm1(-since / tau_p) / -np.expm1(-lead / tau_p)
    p.detune[events, cavity, :] += drift
    for side in (-1, 1):
        neighbour = cavity + side
        inside = (neighbour >= 0) & (neighbour < N_CAVITIES)
        share = _uniform(rng, 0.0, 0.15, int(inside.sum()))[:, None]
        p.detune[events[inside], neighbour[inside], :] += share * drift[inside]
    _rf_off(p, t, trips, rng)


def _controls_fault(
    p: Perturbations, t: FloatArray, trips: Trips, rng: np.random.Generator
) -> None:
    """The drive chain after the field controller misbehaves.

    Half the events get a spurious oscillation of the drive: from 10 to
    80 ms before the trip its amplitude and phase are modulated at f_c
    (60 to 300 Hz) with depths growing as exp(3 (t - t_f) / D) to 20 to 60 %
    and 10 to 40 deg; the controller fights it, so the ask oscillates.  The
    others get one to three drive glitches in the last 30 ms: the drive
    drops to 30 to 90 % and its phase jumps up to +-60 deg for 0.4 to 4 ms.
    """
    events, cavity, t_f = trips.events, trips.cavity, trips.t_f
    n = len(events)
    oscillation = rng.random(n) < 0.5
    now = t[None, :]

    osc = np.flatnonzero(oscillation)
    lead = _uniform(rng, 10.0, 80.0, osc.size)[:, None]
    growth = np.exp(np.minimum(3.0 * (now - t_f[osc, None]) / lead, 0.0))
    growth *= now >= t_f[osc, None] - lead
    arg = 2.0 * math.pi * _uniform(rng, 60.0, 300.0, osc.size)[:, None] * now * 1e-3
    arg = arg + rng.uniform(0.0, 2.0 * math.pi, (osc.size, 1))
    depth = _uniform(rng, 0.2, 0.6, osc.size)[:, None] * growth
    swing = np.radians(_uniform(rng, 10.0, 40.0, osc.size))[:, None] * growth
    p.drive[events[osc], cavity[osc], :] *= (1.0 + depth * np.sin(arg)) * np.exp(
        1j * swing * np.cos(arg)
    )

    gl = np.flatnonzero(~oscillation)
    glitches = rng.integers(1, 4, gl.size)
    for k in range(3):
        begin = (t_f[gl] - _uniform(rng, 0.5, 30.0, gl.size))[:, None]
        length = _uniform(rng, 0.4, 4.0, gl.size)[:, None]
        level = _uniform(rng, 0.3, 0.9, gl.size) * np.exp(
            1j * np.radians(_uniform(rng, -60.0, 60.0, gl.size))
        )
        active = (now >= begin) & (now < begin + length) & (k < glitches)[:, None]
        p.drive[events[gl], cavity[gl], :] *= np.where(active, level[:, None], 1.0)
    _rf_off(p, t, trips, rng)
