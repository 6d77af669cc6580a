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
``ask``      complex gain of the field controller's output stage (1 healthy);
             the recorder's GASK sees it
``loop``     complex factor on the controller's error (1 healthy): a wrong
             loop phase
``hold``     the controller's output frozen at its last value
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
    ask: ComplexArray
    loop: ComplexArray
    hold: BoolArray
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
            ask=np.ones(shape, dtype=np.complex64),
            loop=np.ones(shape, dtype=np.complex64),
            hold=np.zeros(shape, dtype=bool),
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

    The bath pressure rises from t_on with time constant tau_p (100 to
    400 ms); the detuning df/dp dp follows it, with either sign, and reaches
    x_f = sqrt((h m)^2 - 1) half bandwidths at the trip (m from 1.05 to
    1.3): a detune angle of 45 to 70 deg.  The drive gives out when the
    detuning crosses x_lim = sqrt(h^2 - 1), Delta (5 to 60 ms) before the
    trip; after that the gradient sags until the interlock trips, so the
    trip comes while the pressure still rises.  For the exponential rise
    to pass x_lim at t_f - Delta and x_f at t_f, it starts

        t_f - t_on = -tau_p ln((1 - c) / (exp(Delta / tau_p) - c)),  c = x_lim / x_f

    before the trip: 25 to 250 ms.  The tuner is far too slow to follow.
    Neighbouring cavities feel up to 15 % of the pressure.
    """
    events, cavity, t_f, f_half, headroom = (
        trips.events,
        trips.cavity,
        trips.t_f,
        trips.f_half,
        trips.headroom,
    )
    n = len(events)
    tau_p = _uniform(rng, 100.0, 400.0, n)
    delta = _uniform(rng, 5.0, 60.0, n)
    x_final = _beyond_limit(headroom, _uniform(rng, 1.05, 1.3, n))
    crossing = _beyond_limit(headroom, np.ones(n)) / x_final
    lead = -tau_p * np.log((1.0 - crossing) / (np.exp(delta / tau_p) - crossing))
    sign = rng.choice([-1.0, 1.0], n)
    final = (sign * f_half * x_final)[:, None]

    lead, tau_p = lead[:, None], tau_p[:, None]
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
    """The field controller itself goes wrong; the field only follows.

    The fault is in the low-level RF controller (its processor, its output
    stage, a corrupted word of its loop), so the drive it puts out, which
    the recorder logs as GASK, departs from what the cavity needs before
    the gradient reacts, and the forward power follows the drive at once.
    The gradient then moves with the cavity's time constant, and the
    controller's fault detection or the gradient-low interlock opens the RF
    switch.  Three forms, a third each:

    - output collapse: 0.8 to 6 ms before the trip the output stage puts
      out 0 to 60 % of the command, its phase off by up to +-60 deg; below
      1 / h the loop cannot make up for it and its drive sits at the limit;
    - wrong loop phase: 1 to 10 ms before the trip the phase the controller
      turns its error by slips, over 0.2 to 2 ms, by 100 to 180 deg (either
      sign), so the loop pushes the field away instead of holding it: the
      drive runs to its limit at a wrong phase and the field falls;
    - frozen output: 5 to 40 ms before the trip the controller stops
      updating (a hung processor) and holds its last output: the drive
      loses the pickup noise the loop fed into it and stops following the
      microphonics, so the field drifts, until a watchdog trips the RF.

    Contrast with Single Cav Turn off: there the controller is healthy, the
    RF switch removes the forward power and the controller's drive rises as
    it fights the falling gradient; here the drive changes first.  A fault
    that a working loop would cancel (a slow drift of the output gain, say)
    leaves no mark and is not modelled.
    """
    events, cavity, t_f = trips.events, trips.cavity, trips.t_f
    n = len(events)
    form = rng.integers(0, 3, n)
    since = t[None, :] - t_f[:, None]

    collapse = np.flatnonzero(form == 0)
    onset = _uniform(rng, 0.8, 6.0, collapse.size)[:, None]
    level = _uniform(rng, 0.0, 0.6, collapse.size) * np.exp(
        1j * np.radians(_uniform(rng, -60.0, 60.0, collapse.size))
    )
    p.ask[events[collapse], cavity[collapse], :] *= np.where(
        since[collapse] >= -onset, level[:, None], 1.0
    )

    phase = np.flatnonzero(form == 1)
    onset = _uniform(rng, 1.0, 10.0, phase.size)[:, None]
    slip = _uniform(rng, 0.2, 2.0, phase.size)[:, None]
    turn = rng.choice([-1.0, 1.0], phase.size) * _uniform(rng, 100.0, 180.0, phase.size)
    progress = np.clip((since[phase] + onset) / slip, 0.0, 1.0)
    p.loop[events[phase], cavity[phase], :] *= np.exp(
        1j * np.radians(turn[:, None] * progress)
    )

    frozen = np.flatnonzero(form == 2)
    onset = _uniform(rng, 5.0, 40.0, frozen.size)[:, None]
    p.hold[events[frozen], cavity[frozen], :] |= since[frozen] >= -onset
    _rf_off(p, t, trips, rng)
