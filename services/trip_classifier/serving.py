"""A trained trip classifier at work: its artifact, and classifying trip events.

:class:`TripModel` is what the ``trip-classifier`` service serves: the CNN
and the two forests, how their probabilities are combined, the time grid
and the signals they read, and the names of the classes.  It is stored as a
datastore artifact of plain files (JSON, a torch state dict, ``.npz``
arrays) and loaded without unpickling anything.

A trip event's waveforms are a dataset in the layout the ``srf-cavity``
simulator and :func:`.reader.read_trip_event` write: ``waveform`` with dims
``(cavity, signal, time)``, optionally after one dimension of events
(``sample``), a ``signal`` coordinate naming the signals and a ``time``
coordinate in ms relative to the trigger.  The time axis is either the
model's grid or a full-rate (0.2 ms) record covering it, from which the
grid's samples are taken.

Each verdict names the cavity and the fault type with their probabilities
and the features that drove the decision: the forest's per-event
attribution (see :meth:`.models.TreeEnsemble.contributions`) of the
probability of the fault type the combined model names, largest first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from wakefield.datastore import Datastore
from wakefield.errors import EventError, ServiceError, TripDataError
from wakefield.events import DataRef

from .features import describe_feature, trip_features
from .models import (
    Normalizer,
    TreeEnsemble,
    TripCNN,
    cnn_files,
    cnn_from_files,
    predict_cnn,
)
from .reader import at_times

log = logging.getLogger(__name__)

__all__ = ["TripModel", "trip_waveforms"]

FloatArray = npt.NDArray[np.float64]

MODEL_FILE = "model.json"
FORMAT = "wakefield.trip-classifier/1"
_TIME_TOLERANCE = 1e-3
"""Largest difference between an event's sample time and the grid's, ms."""


@dataclass
class TripModel:
    """The CNN and the forests, combined, on one time grid."""

    cnn: TripCNN
    normalizer: Normalizer
    fault_forest: TreeEnsemble
    cavity_forest: TreeEnsemble
    fault_types: list[str]
    cavity_labels: list[str]
    times: FloatArray
    """The time grid the models read, ms."""
    signals: tuple[str, ...]
    weights: dict[str, float]
    """Weight of the CNN's probabilities (the forest's is 1 - weight) for
    ``fault`` and ``cavity``."""
    info: dict[str, Any] = field(default_factory=dict)
    """Training details kept with the model (dataset, metrics, decision)."""
    ref: DataRef | None = None

    # Storage

    def to_files(self) -> dict[str, bytes]:
        """The files of the artifact; none needs unpickling to be read."""
        names = {"fault_types": self.fault_types, "cavity_labels": self.cavity_labels}
        spec = {
            "format": FORMAT,
            **names,
            "times": self.times.tolist(),
            "signals": list(self.signals),
            "weights": self.weights,
            "info": self.info,
        }
        return {
            MODEL_FILE: json.dumps(spec, indent=1).encode(),
            **cnn_files(self.cnn, self.normalizer, names),
            **self.fault_forest.to_files("fault_forest"),
            **self.cavity_forest.to_files("cavity_forest"),
        }

    @classmethod
    def from_files(
        cls, files: dict[str, bytes], ref: DataRef | None = None
    ) -> TripModel:
        try:
            spec = json.loads(files[MODEL_FILE])
        except (KeyError, ValueError) as exc:
            raise ServiceError(f"not a trip classifier artifact: {exc}") from exc
        if spec.get("format") != FORMAT:
            raise ServiceError(
                f"the artifact's format is {spec.get('format')!r}; this version "
                f"reads {FORMAT!r}"
            )
        cnn, normalizer, _ = cnn_from_files(files)
        return cls(
            cnn=cnn,
            normalizer=normalizer,
            fault_forest=TreeEnsemble.from_files(files, "fault_forest"),
            cavity_forest=TreeEnsemble.from_files(files, "cavity_forest"),
            fault_types=list(spec["fault_types"]),
            cavity_labels=list(spec["cavity_labels"]),
            times=np.asarray(spec["times"], dtype=np.float64),
            signals=tuple(spec["signals"]),
            weights={k: float(v) for k, v in spec["weights"].items()},
            info=dict(spec.get("info", {})),
            ref=ref,
        )

    def save(
        self,
        store: Datastore,
        uri: str,
        *,
        extra: dict[str, bytes] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DataRef:
        """Publish the model (and ``extra`` files) as an artifact at ``uri``."""
        ref = store.write_artifact({**self.to_files(), **(extra or {})}, uri, meta=meta)
        self.ref = ref
        return ref

    @classmethod
    def load(cls, store: Datastore, ref: DataRef | str) -> TripModel:
        """The model published at ``ref`` (a reference, or a URI)."""
        ref = ref if isinstance(ref, DataRef) else store.ref(ref)
        names = [MODEL_FILE, "cnn.json", "cnn.pt"] + [
            f"{forest}.{suffix}"
            for forest in ("fault_forest", "cavity_forest")
            for suffix in ("json", "npz")
        ]
        files = {name: store.read_artifact(ref, name) for name in names}
        model = cls.from_files(files, ref)
        log.info("loaded trip classifier %s", ref.uri)
        return model

    # Classifying

    def prepare(self, ds: xr.Dataset) -> FloatArray:
        """The waveforms of ``ds`` on this model's grid and signals,
        shape (events, cavities, signals, time)."""
        waveform, times = trip_waveforms(ds, self.signals)
        if times.shape == self.times.shape and np.allclose(
            times, self.times, atol=_TIME_TOLERANCE
        ):
            return waveform
        record = xr.Dataset(
            {"waveform": (("sample", "cavity", "signal", "time"), waveform)},
            coords={"time": times},
        )
        try:
            gridded = at_times(record, self.times)
        except TripDataError as exc:
            raise EventError(
                f"the trip event's time axis ({times.size} samples, {times[0]} to "
                f"{times[-1]} ms) is neither this model's grid ({self.times.size} "
                f"samples, {self.times[0]} to {self.times[-1]} ms) nor a full-rate "
                f"record covering it: {exc}"
            ) from exc
        return np.asarray(gridded["waveform"].values, dtype=np.float64)

    def probabilities(self, waveform: FloatArray) -> dict[str, FloatArray]:
        """Each model's and the combined probabilities, and the features."""
        cnn_cavity, cnn_fault = predict_cnn(
            self.cnn, self.normalizer(waveform, self.times)
        )
        features = trip_features(waveform, self.times, self.signals)
        tree_fault = self.fault_forest.predict_proba(features)
        tree_cavity = self.cavity_forest.predict_proba(features)
        wf, wc = self.weights["fault"], self.weights["cavity"]
        return {
            "cnn_fault": cnn_fault,
            "cnn_cavity": cnn_cavity,
            "trees_fault": tree_fault,
            "trees_cavity": tree_cavity,
            "fault": wf * cnn_fault + (1.0 - wf) * tree_fault,
            "cavity": wc * cnn_cavity + (1.0 - wc) * tree_cavity,
            "features": features,
        }

    def classify(self, ds: xr.Dataset, *, top: int = 5) -> list[dict[str, Any]]:
        """One verdict per trip event in ``ds``."""
        p = self.probabilities(self.prepare(ds))
        fault = p["fault"].argmax(axis=1)
        base, share = self.fault_forest.contributions(p["features"], fault)
        verdicts = []
        for i in range(len(fault)):
            verdicts.append(
                {
                    **self._verdict(p["cavity"][i], p["fault"][i]),
                    "features": self._explain(p["features"][i], share[i], top),
                    "attribution": {
                        "method": "forest path contributions (Saabas)",
                        "base": float(base[i]),
                        "forest_probability": float(p["trees_fault"][i, fault[i]]),
                    },
                    "models": {
                        "cnn": self._short(p["cnn_cavity"][i], p["cnn_fault"][i]),
                        "trees": self._short(p["trees_cavity"][i], p["trees_fault"][i]),
                    },
                }
            )
        return verdicts

    def _verdict(self, cavity: FloatArray, fault: FloatArray) -> dict[str, Any]:
        return {
            "cavity": self.cavity_labels[int(cavity.argmax())],
            "cavity_confidence": float(cavity.max()),
            "fault": self.fault_types[int(fault.argmax())],
            "fault_confidence": float(fault.max()),
            "cavity_probabilities": _rounded(self.cavity_labels, cavity),
            "fault_probabilities": _rounded(self.fault_types, fault),
        }

    def _short(self, cavity: FloatArray, fault: FloatArray) -> dict[str, Any]:
        return {
            "cavity": self.cavity_labels[int(cavity.argmax())],
            "cavity_confidence": round(float(cavity.max()), 4),
            "fault": self.fault_types[int(fault.argmax())],
            "fault_confidence": round(float(fault.max()), 4),
        }

    def _explain(
        self, values: FloatArray, share: FloatArray, top: int
    ) -> list[dict[str, Any]]:
        names = self.fault_forest.feature_names
        order = np.argsort(share)[::-1][:top]
        return [
            {
                "name": names[j],
                "value": round(float(values[j]), 6),
                "contribution": round(float(share[j]), 6),
                "description": describe_feature(names[j]),
            }
            for j in order
            if share[j] > 0
        ]


def trip_waveforms(
    ds: xr.Dataset, signals: tuple[str, ...] | list[str]
) -> tuple[FloatArray, FloatArray]:
    """The ``waveform`` of a trip dataset as (events, cavity, signal, time)
    with the given signals in order, and its time axis (ms).

    Raises :class:`~wakefield.errors.EventError` naming what is wrong: no
    ``waveform``, other dimensions, missing signals or coordinates, or
    values that are not finite.
    """
    if "waveform" not in ds:
        raise EventError(
            "the trip dataset has no 'waveform' variable; it needs waveform with "
            f"dims (cavity, signal, time), optionally after sample; it has "
            f"{sorted(map(str, ds.data_vars))}"
        )
    wave = ds["waveform"]
    core = ("cavity", "signal", "time")
    extra = [str(d) for d in wave.dims if d not in core]
    if not set(core) <= set(map(str, wave.dims)) or len(extra) > 1:
        raise EventError(
            f"waveform has dims {tuple(map(str, wave.dims))}; a trip event's "
            "waveform has (cavity, signal, time), optionally after one dimension "
            "of events such as sample"
        )
    for name in ("signal", "time"):
        if name not in ds.coords:
            raise EventError(
                f"the trip dataset has no {name!r} coordinate; it names the "
                "signals (GMES, GASK, ...) and gives the time in ms"
            )
    have = [str(s) for s in ds["signal"].values]
    missing = [s for s in signals if s not in have]
    if missing:
        raise EventError(
            f"the trip event lacks the signals {missing}; it has {have}, the "
            f"model reads {list(signals)}"
        )
    wave = wave.sel(signal=list(signals))
    wave = (
        wave.expand_dims("sample") if not extra else wave.rename({extra[0]: "sample"})
    )
    values = np.asarray(wave.transpose("sample", *core).values, dtype=np.float64)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise EventError(
            f"the trip event's waveform has {bad} values that are not finite "
            "numbers; a classifier needs every sample of every signal"
        )
    return values, np.asarray(ds["time"].values, dtype=np.float64)


def _rounded(names: list[str], p: FloatArray) -> dict[str, float]:
    return {name: round(float(v), 6) for name, v in zip(names, p, strict=True)}
