"""Interpretable features of a trip event, per cavity and signal.

Each feature is something an RF expert reads off the waveforms: the
gradient before the trip and how much of it is left after, when and how fast
it fell, whether drive and forward power climbed before the trip, how far
and how fast the detune angle moved, and which cavity moved first.  They
feed the tree model (:mod:`.models`), whose importances then say which
physics drove a decision.

Time windows, in ms relative to the trigger: ``baseline`` before -100,
``late`` from -20 to -1 (just before the trip), ``lead`` from -100 to -1,
``after`` from 10 to 20, and ``fall``, the 2 ms before the cavity's own
gradient first fell below 90 % (the 2 ms before the trigger if it never
did).  The time axis may be unevenly spaced (finer around the trigger);
spectra are taken on its evenly spaced part.  Gradients are in MV/m, times in ms, frequencies in
Hz, angles in deg; ``rel`` marks a ratio to the cavity's own baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import xarray as xr

from wakefield.errors import EventError

__all__ = [
    "FEATURES",
    "ZONE_FEATURES",
    "describe_feature",
    "feature_names",
    "trip_features",
]

FloatArray = npt.NDArray[np.float64]

REQUIRED_SIGNALS = ("GMES", "GASK", "CRFP", "DETA2")
"""The signals the features are computed from."""

FEATURE_TEXT: dict[str, str] = {
    "gmes_base": "baseline gradient, MV/m",
    "gmes_noise_rel": "baseline gradient rms over its mean",
    "gmes_late_sag_rel": "1 - late gradient / baseline",
    "gmes_after_rel": "gradient left 10 to 20 ms after the trigger / baseline",
    "gmes_t90": "first time the gradient is below 90 % of baseline, ms",
    "gmes_t90_rel": "that time minus the earliest of all cavities', ms",
    "gmes_tau_high": "e-folding time of the gradient from 90 % to 50 %, ms",
    "gmes_tau_low": "e-folding time of the gradient from 50 % to 20 %, ms",
    "gmes_late_noise_rel": "late gradient rms over baseline rms",
    "gask_late_rel": "late drive (GASK) / baseline - 1",
    "gask_noise_ratio": "log of late drive rms over baseline rms",
    "gask_slope_rel": "drive slope over the lead window, per 100 ms, relative",
    "gask_fall_rel": "drive in the 2 ms before the gradient fell / baseline - 1",
    "gask_line_ratio": "log of the drive's strongest line from -64 to -4 ms over "
    "its baseline's",
    "crfp_late_rel": "late forward power / baseline - 1",
    "crfp_noise_ratio": "log of late forward power rms over baseline rms",
    "crfp_slope_rel": "forward power slope over the lead window, per 100 ms, relative",
    "crfp_fall_rel": "forward power in the 2 ms before the gradient fell / "
    "baseline - 1",
    "crfp_line_ratio": "log of the forward power's strongest line from -64 to "
    "-4 ms over its baseline's",
    "deta_base": "baseline mean detune angle, deg",
    "deta_late_shift": "late mean detune angle minus baseline, deg",
    "deta_base_std": "baseline detune angle rms, deg",
    "deta_lead_std": "detrended detune angle rms over the last 200 ms, deg",
    "deta_growth": "log of detune angle rms in the last 50 ms over before -200 ms",
    "deta_peak_freq": "strongest line of the detune angle before the trip, Hz",
    "deta_peak_amp": "its amplitude, deg",
    "first_dev_rel": "first departure from baseline minus the median cavity's, ms",
}
"""What each per-cavity feature measures, with its unit."""

FEATURES: tuple[str, ...] = tuple(FEATURE_TEXT)
"""Features of each cavity; a column is named ``c<cavity>_<feature>``."""

FIRST_PREFIX = "first"
"""Columns ``first_<feature>`` repeat the features of the cavity whose
gradient fell first (ties go to the one with the least gradient left), so
that a fault's signature sits in the same columns whichever cavity it hit."""

ZONE_TEXT: dict[str, str] = {
    "zone_n_dropped": "cavities below half their gradient after the trip",
    "zone_t90_spread": "spread of the fall times of the dropped cavities, ms",
}
ZONE_FEATURES: tuple[str, ...] = tuple(ZONE_TEXT)
"""Features of the whole cryomodule."""

_NEVER = 150.0
"""Stands for a time that never came, ms (past the record's end)."""


def feature_names(n_cavities: int = 8) -> list[str]:
    """Column names of :func:`trip_features`, in order."""
    per_cavity = [f"c{c}_{f}" for c in range(1, n_cavities + 1) for f in FEATURES]
    first = [f"{FIRST_PREFIX}_{f}" for f in FEATURES]
    return per_cavity + first + list(ZONE_FEATURES)


def describe_feature(name: str) -> str:
    """What a column of :func:`trip_features` measures, in words."""
    if name in ZONE_TEXT:
        return ZONE_TEXT[name]
    where, _, feature = name.partition("_")
    text = FEATURE_TEXT.get(feature)
    if text is None:
        return name
    if where == FIRST_PREFIX:
        return f"cavity that fell first: {text}"
    return f"cavity {where.removeprefix('c')}: {text}"


def trip_features(
    waveform: npt.NDArray[np.floating], times: FloatArray, signals: Sequence[str]
) -> FloatArray:
    """Features of trip events, shape (events, len(feature_names())).

    ``waveform`` has shape (events, cavities, signals, time) on the time
    axis ``times`` (ms), which must reach from before -200 ms to after 20 ms.
    """
    missing = [s for s in REQUIRED_SIGNALS if s not in signals]
    if missing:
        raise EventError(
            f"trip features need the signals {REQUIRED_SIGNALS}; {missing} "
            f"are missing from {list(signals)}"
        )
    if times[0] > -200.0 or times[-1] < 20.0:
        raise EventError(
            f"trip features need a record from before -200 ms to after 20 ms; "
            f"got {times[0]} to {times[-1]} ms"
        )
    x = np.asarray(waveform, dtype=np.float64)
    gmes, gask, crfp, deta = (x[:, :, list(signals).index(s)] for s in REQUIRED_SIGNALS)

    gradient = _gradient(gmes, times)
    fall = _fall_window(gradient["gmes_t90"], times)
    even = _evenly_spaced(times)
    columns = {
        **gradient,
        **_drive("gask", gask, times, fall, even),
        **_drive("crfp", crfp, times, fall, even),
        **_detune(deta, times),
    }
    columns["first_dev_rel"] = _first_departure(gmes, gask, crfp, times)
    per_cavity = np.stack([columns[f] for f in FEATURES], axis=-1)
    order = np.lexsort((columns["gmes_after_rel"], columns["gmes_t90"]), axis=-1)
    first = per_cavity[np.arange(len(x)), order[:, 0]]
    zone = _zone(columns)
    out = np.concatenate([per_cavity.reshape(len(x), -1), first, zone], axis=1)
    return np.asarray(
        np.nan_to_num(out, nan=0.0, posinf=_NEVER, neginf=-_NEVER), dtype=np.float64
    )


def dataset_features(ds: xr.Dataset) -> xr.DataArray:
    """The features of a dataset with ``waveform`` (sample, cavity, signal, time)."""
    wave = ds["waveform"]
    if "sample" not in wave.dims:
        wave = wave.expand_dims("sample")
    values = trip_features(
        wave.transpose("sample", "cavity", "signal", "time").values,
        ds["time"].values,
        [str(s) for s in ds["signal"].values],
    )
    return xr.DataArray(
        values,
        dims=("sample", "feature"),
        coords={"feature": feature_names(wave.sizes["cavity"])},
    )


def _window(times: FloatArray, low: float, high: float) -> npt.NDArray[np.bool_]:
    return (times >= low) & (times < high)


def _first_time(
    condition: npt.NDArray[np.bool_], times: FloatArray, after: float
) -> FloatArray:
    """First time at or after ``after`` where ``condition`` holds (_NEVER if none)."""
    cond = condition & (times >= after)
    first = np.argmax(cond, axis=-1)
    return np.where(cond.any(axis=-1), times[first], _NEVER)


def _gradient(g: FloatArray, times: FloatArray) -> dict[str, FloatArray]:
    base_w = times < -100.0
    base = np.maximum(g[..., base_w].mean(axis=-1), 1e-3)
    noise = g[..., base_w].std(axis=-1)
    late = g[..., _window(times, -20.0, -1.0)]
    rel = g / base[..., None]

    t90 = _first_time(rel < 0.9, times, -100.0)
    t50 = _first_time(rel < 0.5, times, -100.0)
    t20 = _first_time(rel < 0.2, times, -100.0)
    dropped = t90 < _NEVER
    earliest = np.where(dropped, t90, np.inf).min(axis=1, keepdims=True)
    return {
        "gmes_base": base,
        "gmes_noise_rel": noise / base,
        "gmes_late_sag_rel": 1.0 - late.mean(axis=-1) / base,
        "gmes_after_rel": rel[..., _window(times, 10.0, 20.0)].mean(axis=-1),
        "gmes_t90": t90,
        "gmes_t90_rel": np.where(dropped, t90 - earliest, _NEVER),
        "gmes_tau_high": np.where(
            t50 < _NEVER, (t50 - t90) / np.log(0.9 / 0.5), _NEVER
        ),
        "gmes_tau_low": np.where(t20 < _NEVER, (t20 - t50) / np.log(0.5 / 0.2), _NEVER),
        "gmes_late_noise_rel": late.std(axis=-1) / np.maximum(noise, 1e-6),
    }


def _fall_window(t90: FloatArray, times: FloatArray) -> npt.NDArray[np.bool_]:
    """Per event and cavity, the 2 ms before the gradient fell (or the trigger)."""
    end = np.minimum(t90, 0.0)[..., None]
    return (times >= end - 2.0) & (times < end)


def _drive(
    name: str,
    y: FloatArray,
    times: FloatArray,
    fall: npt.NDArray[np.bool_],
    even: npt.NDArray[np.bool_],
) -> dict[str, FloatArray]:
    base_w = times < -100.0
    base = np.maximum(np.abs(y[..., base_w].mean(axis=-1)), 1e-6)
    noise = np.maximum(y[..., base_w].std(axis=-1), 1e-6)
    late = y[..., _window(times, -20.0, -1.0)]
    lead_w = _window(times, -100.0, -1.0)
    slope = np.polyfit(times[lead_w], y[..., lead_w].reshape(-1, lead_w.sum()).T, 1)[0]
    at_fall = (y * fall).sum(axis=-1) / np.maximum(fall.sum(axis=-1), 1)
    return {
        f"{name}_late_rel": late.mean(axis=-1) / base - 1.0,
        f"{name}_noise_ratio": np.log(np.maximum(late.std(axis=-1), 1e-6) / noise),
        f"{name}_slope_rel": slope.reshape(base.shape) * 100.0 / base,
        f"{name}_fall_rel": at_fall / base - 1.0,
        f"{name}_line_ratio": np.log(
            _line(y, times, even, -64.0, -4.0) / _line(y, times, even, -400.0, -100.0)
        ),
    }


def _line(
    y: FloatArray,
    times: FloatArray,
    even: npt.NDArray[np.bool_],
    low: float,
    high: float,
) -> FloatArray:
    """Amplitude of the strongest line of ``y`` between ``low`` and ``high`` ms
    (detrended, Hann window, evenly spaced samples), relative to its mean."""
    w = _window(times, low, high) & even
    segment = y[..., w]
    tl = times[w]
    coef = np.polyfit(tl, segment.reshape(-1, tl.size).T, 1)
    trend = (coef[0][:, None] * tl[None, :] + coef[1][:, None]).reshape(segment.shape)
    hann = np.hanning(tl.size)
    spectrum = np.abs(np.fft.rfft((segment - trend) * hann, axis=-1))[..., 1:]
    scale = np.maximum(np.abs(segment.mean(axis=-1)), 1e-6)
    return np.asarray(
        np.maximum(2.0 * spectrum.max(axis=-1) / hann.sum() / scale, 1e-6),
        dtype=np.float64,
    )


def _evenly_spaced(times: FloatArray) -> npt.NDArray[np.bool_]:
    """The samples on the time axis's coarsest even lattice (all, if even)."""
    step = float(np.max(np.diff(times)))
    offset = (times - times[0]) / step
    return np.asarray(np.abs(offset - np.round(offset)) < 1e-3, dtype=bool)


def _detune(d: FloatArray, times: FloatArray) -> dict[str, FloatArray]:
    base_w = times < -100.0
    lead_w = _window(times, -200.0, -1.0) & _evenly_spaced(times)
    late = d[..., _window(times, -20.0, -1.0)]
    early = d[..., times < -200.0]
    last = d[..., _window(times, -50.0, -1.0)]

    # Detrended lead window, then its strongest spectral line (Hann window).
    lead = d[..., lead_w]
    tl = times[lead_w]
    coef = np.polyfit(tl, lead.reshape(-1, tl.size).T, 1)
    trend = (coef[0][:, None] * tl[None, :] + coef[1][:, None]).reshape(lead.shape)
    wiggle = lead - trend
    hann = np.hanning(tl.size)
    spectrum = np.abs(np.fft.rfft(wiggle * hann, axis=-1))[..., 1:]
    freqs = np.fft.rfftfreq(tl.size, d=(tl[1] - tl[0]) * 1e-3)[1:]
    peak = spectrum.argmax(axis=-1)
    return {
        "deta_base": d[..., base_w].mean(axis=-1),
        "deta_late_shift": late.mean(axis=-1) - d[..., base_w].mean(axis=-1),
        "deta_base_std": d[..., base_w].std(axis=-1),
        "deta_lead_std": wiggle.std(axis=-1),
        "deta_growth": np.log(
            np.maximum(last.std(axis=-1), 1e-3) / np.maximum(early.std(axis=-1), 1e-3)
        ),
        "deta_peak_freq": freqs[peak],
        "deta_peak_amp": 2.0 * spectrum.max(axis=-1) / hann.sum(),
    }


def _first_departure(
    gmes: FloatArray, gask: FloatArray, crfp: FloatArray, times: FloatArray
) -> FloatArray:
    """When a cavity first leaves its baseline, relative to the median cavity.

    A departure is any of GMES, GASK or CRFP more than 6 baseline rms away
    from its baseline mean (and GMES more than 2 % away).
    """
    base_w = times < -100.0
    first = np.full(gmes.shape[:2], _NEVER)
    for y, floor in ((gmes, 0.02), (gask, 0.0), (crfp, 0.0)):
        mean = y[..., base_w].mean(axis=-1, keepdims=True)
        rms = y[..., base_w].std(axis=-1, keepdims=True)
        limit = np.maximum(6.0 * rms, floor * np.abs(mean))
        first = np.minimum(first, _first_time(np.abs(y - mean) > limit, times, -100.0))
    return np.asarray(first - np.median(first, axis=1, keepdims=True), dtype=np.float64)


def _zone(columns: dict[str, FloatArray]) -> FloatArray:
    dropped = columns["gmes_after_rel"] < 0.5
    t90 = np.where(dropped, columns["gmes_t90"], np.nan)
    spread = np.where(
        dropped.sum(axis=1) > 1,
        np.nanmax(np.where(dropped, t90, -np.inf), axis=1)
        - np.nanmin(np.where(dropped, t90, np.inf), axis=1),
        0.0,
    )
    return np.stack([dropped.sum(axis=1).astype(float), spread], axis=1)
