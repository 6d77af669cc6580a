"""Reading trip events as CEBAF's C100 waveform harvester writes them.

A trip event is a folder (``<zone>/<date>/<time>/``) with one tab-separated
file per cavity, ``R1P<cavity>WFTharv.<date>_<time>.<n>.txt``: a ``Time``
column in ms (-1536 to 102.2 in 0.2 ms steps, the trip at 0) and 17 signal
columns ``R1P<cavity>WFT<signal>``.  :func:`read_trip_event` turns it into
the layout the ``srf-cavity`` simulator writes (``cavity``, ``signal``,
``time``), and :func:`to_grid` keeps the window and decimation a trained
classifier expects.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from wakefield.errors import TripDataError
from wakefield.services.simulators.srf import (
    CLASSIFIER_SIGNALS,
    RECORD_STEP,
    RECORDED_SIGNALS,
    SIGNALS,
    RecordGrid,
)

log = logging.getLogger(__name__)

__all__ = ["at_times", "read_trip_event", "to_grid"]

N_CAVITIES = 8
_FILE = re.compile(
    r"^(?P<prefix>R\w\w)(?P<cavity>[1-8])WFTharv\."
    r"(?P<date>\d{4}_\d{2}_\d{2})_(?P<time>\d{6})\.\d+\.txt$"
)
_STEP_TOLERANCE = 1e-3
"""Largest departure of a time step from the first one, ms."""


def read_trip_event(
    folder: str | os.PathLike[str],
    *,
    signals: Sequence[str] | Literal["all"] = CLASSIFIER_SIGNALS,
) -> xr.Dataset:
    """One recorded trip event as a Dataset with ``waveform`` (cavity, signal, time).

    ``signals`` names the recorder's signals to keep (default the four the
    classifier uses), or ``"all"`` for the 17.  Raises
    :class:`~wakefield.errors.TripDataError` if a cavity's file is missing
    or duplicated, a signal column is missing, a value is not a number, the
    files' time axes differ, or the sample spacing is not constant.
    """
    folder = Path(folder)
    wanted = list(RECORDED_SIGNALS) if signals == "all" else list(signals)
    unknown = [s for s in wanted if s not in RECORDED_SIGNALS]
    if unknown or not wanted:
        raise TripDataError(
            f"unknown signals {unknown or wanted}; the recorder keeps "
            f"{', '.join(RECORDED_SIGNALS)}"
        )

    files, prefix, stamp = _cavity_files(folder)
    times: dict[int, npt.NDArray[np.float64]] = {}
    values = np.empty((N_CAVITIES, len(wanted), 0), dtype=np.float32)
    for cavity, path in files.items():
        t, data = _read_table(path, f"{prefix}{cavity}WFT", wanted)
        if values.shape[-1] == 0:
            values = np.empty((N_CAVITIES, len(wanted), len(t)), dtype=np.float32)
        _check_times(path, t, times, files)
        times[cavity] = t
        values[cavity - 1] = data

    log.info("read trip event %s (%s signals)", folder, len(wanted))
    return _dataset(values, times[1], wanted, folder, prefix, stamp)


def to_grid(event: xr.Dataset, grid: RecordGrid | None = None) -> xr.Dataset:
    """The samples of a full-rate record that a classifier's grid keeps.

    The record must have the recorder's 0.2 ms spacing and cover the grid's
    window; the result has the grid's ``time`` axis exactly.
    """
    return at_times(event, (grid or RecordGrid()).times)


def at_times(event: xr.Dataset, times: npt.NDArray[np.float64]) -> xr.Dataset:
    """The samples of a full-rate record at ``times`` (ms, on its 0.2 ms grid).

    Raises :class:`~wakefield.errors.TripDataError` if the record is not
    sampled every 0.2 ms or does not cover ``times``.
    """
    t = event["time"].values
    step = float(t[1] - t[0]) if t.size > 1 else float("nan")
    if not abs(step - RECORD_STEP) < _STEP_TOLERANCE:
        raise TripDataError(
            f"the record's sample spacing is {step} ms; a classifier's grid "
            f"takes its samples from a record with the recorder's {RECORD_STEP} ms"
        )
    wanted = np.asarray(times, dtype=np.float64)
    index = np.round((wanted - t[0]) / step).astype(np.int64)
    if index[0] < 0 or index[-1] >= t.size:
        raise TripDataError(
            f"the record spans {t[0]} to {t[-1]} ms; the grid needs "
            f"{wanted[0]} to {wanted[-1]} ms. Use a grid inside the record."
        )
    if np.abs(t[index] - wanted).max() > _STEP_TOLERANCE:
        raise TripDataError(
            f"the grid's times are not sample times of the record (it starts at "
            f"{t[0]} ms, every {step} ms)"
        )
    picked = event.isel(time=index)
    return picked.assign_coords(time=("time", wanted, event["time"].attrs))


def _cavity_files(folder: Path) -> tuple[dict[int, Path], str, str]:
    """The file of each cavity, the zone's signal prefix and the time stamp."""
    if not folder.is_dir():
        raise TripDataError(f"trip event folder {folder} does not exist or is a file")
    found: dict[int, list[Path]] = {}
    prefixes: set[str] = set()
    stamp = ""
    for path in sorted(folder.iterdir()):
        match = _FILE.match(path.name)
        if match is None:
            continue
        found.setdefault(int(match["cavity"]), []).append(path)
        prefixes.add(match["prefix"])
        stamp = stamp or f"{match['date']}_{match['time']}"

    missing = [c for c in range(1, N_CAVITIES + 1) if c not in found]
    if missing:
        raise TripDataError(
            f"{folder} lacks the files of cavities {missing}; a trip event needs "
            "one file R1P<cavity>WFTharv.<date>_<time>.<n>.txt per cavity 1 to 8"
        )
    doubled = {
        c: [p.name for p in paths] for c, paths in found.items() if len(paths) > 1
    }
    if doubled:
        raise TripDataError(f"{folder} has more than one file for cavities {doubled}")
    if len(prefixes) > 1:
        raise TripDataError(
            f"{folder} mixes files of several zones {sorted(prefixes)}; "
            "keep one zone's eight files per folder"
        )
    return {c: paths[0] for c, paths in sorted(found.items())}, prefixes.pop(), stamp


def _read_table(
    path: Path, column_prefix: str, wanted: Sequence[str]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """The time column and the wanted signals of one cavity's file."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise TripDataError(
            f"cannot read {path} as a tab-separated table: {exc}"
        ) from exc

    columns = ["Time", *(column_prefix + s for s in wanted)]
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise TripDataError(
            f"{path} lacks the columns {absent}; it has {list(table.columns)[:5]}..."
        )
    if len(table) < 2:
        raise TripDataError(
            f"{path} has {len(table)} data rows; a record needs 2 or more"
        )

    numbers = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise TripDataError(
            f"{path}, line {row + 2}, column {columns[col]}: "
            f"{table[columns[col]].iloc[row]!r} is not a number"
        )
    t = numbers["Time"].to_numpy(dtype=np.float64)
    data = numbers[columns[1:]].to_numpy(dtype=np.float32).T
    return t, data


def _check_times(
    path: Path,
    t: npt.NDArray[np.float64],
    seen: dict[int, npt.NDArray[np.float64]],
    files: dict[int, Path],
) -> None:
    """Constant spacing within a file, and the same time axis in every file."""
    steps = np.diff(t)
    step = steps[0]
    if not step > 0:
        raise TripDataError(f"{path}: time does not increase between lines 2 and 3")
    uneven = np.flatnonzero(np.abs(steps - step) > _STEP_TOLERANCE)
    if uneven.size:
        i = int(uneven[0])
        raise TripDataError(
            f"{path}, line {i + 3}: time steps from {t[i]} to {t[i + 1]} ms; the "
            f"record's spacing is {step:g} ms. A record must be sampled evenly."
        )
    for cavity, other in seen.items():
        if (
            other.size != t.size
            or abs(other[0] - t[0]) > _STEP_TOLERANCE
            or (abs(other[-1] - t[-1]) > _STEP_TOLERANCE)
        ):
            raise TripDataError(
                f"{path} spans {t[0]} to {t[-1]} ms in {t.size} rows, but "
                f"{files[cavity].name} spans {other[0]} to {other[-1]} ms in "
                f"{other.size} rows; the cavities of one event share one time axis"
            )


def _dataset(
    values: npt.NDArray[np.float32],
    t: npt.NDArray[np.float64],
    signals: Sequence[str],
    folder: Path,
    prefix: str,
    stamp: str,
) -> xr.Dataset:
    units = "; ".join(f"{s} in {SIGNALS[s][0]}" for s in signals if s in SIGNALS)
    coords = {
        "cavity": (
            "cavity",
            np.arange(1, N_CAVITIES + 1),
            {"long_name": "cavity number in the cryomodule"},
        ),
        "signal": ("signal", np.array(signals), {"long_name": units}),
        "time": (
            "time",
            np.round(t, 4),
            {"units": "ms", "long_name": "time relative to the recorder's trigger"},
        ),
    }
    waveform = xr.Variable(
        ("cavity", "signal", "time"),
        values,
        {"long_name": "recorded signals; units in the signal coordinate"},
    )
    return xr.Dataset(
        {"waveform": waveform},
        coords=coords,
        attrs={
            "zone": folder.parent.parent.name,
            "prefix": prefix,
            "recorded": stamp,
            "source": str(folder),
        },
    )
