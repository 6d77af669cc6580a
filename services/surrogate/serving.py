"""Serving: predict requests in, responses out, and the model being served.

A request's data is ``{"settings": {"l1_phase": [..], ...}}`` (a value or
a list per setting), ``{"settings": [{...}, {...}]}`` or just a list of
records, optionally with ``"samples"`` (MC dropout passes) and
``"images": false`` (no image, which saves writing one).  A response
carries the request's id, the model's reference, each scalar output's
mean, standard deviation and unit inline, and which samples had which
settings out of range.  An image output goes by reference: a small
dataset of the predicted images and their standard deviation.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, StrictBool, ValidationError

from wakefield.config import StrictModel
from wakefield.datastore import Datastore
from wakefield.events import DataRef
from wakefield.variables import Output

from .config import Policy
from .errors import RequestError
from .model import Prediction, SurrogateModel

log = logging.getLogger(__name__)

PREDICTION = "org.wakefield.prediction"
PREDICTION_ERROR = "org.wakefield.prediction.error"


class PredictRequest(StrictModel):
    """The data of a predict request."""

    settings: Any
    """Per setting a value or a list (one per sample), or one record per
    sample; checked against the model's settings when answered."""
    samples: int | None = Field(default=None, ge=2, le=10_000)
    """Passes of MC dropout for this request."""
    images: StrictBool = True
    """Predict the image output too (when the model has one)."""


def parse_request(data: Any) -> PredictRequest:
    """A request from an event's data; :class:`RequestError` says what is wrong."""
    if isinstance(data, list):
        data = {"settings": data}
    if not isinstance(data, Mapping):
        raise RequestError(
            'a predict request\'s data must be an object {"settings": {name: '
            f"[values]}} or a list of records; got {type(data).__name__}"
        )
    try:
        return PredictRequest.load(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise RequestError(f"the predict request is not valid: {problems}") from exc


def settings_of(request: PredictRequest) -> dict[str, Any]:
    """The request's settings as one value or list per name."""
    if isinstance(request.settings, Mapping):
        return dict(request.settings)
    records = request.settings
    if not isinstance(records, list) or not all(
        isinstance(r, Mapping) for r in records
    ):
        raise RequestError(
            "settings must be an object {name: value or [values]} or a list of "
            f"records [{{name: value}}, ...]; got {type(records).__name__}"
        )
    if not records:
        raise RequestError("the request's list of records is empty")
    names = list(records[0])
    for i, record in enumerate(records):
        if set(record) != set(names):
            raise RequestError(
                f"record {i} names {sorted(record)}, record 0 names {sorted(names)}; "
                "every record must name the same settings"
            )
    return {n: [r[n] for r in records] for n in names}


def respond(
    model: SurrogateModel,
    request: PredictRequest,
    *,
    policy: Mapping[str, Policy],
    max_samples: int,
    inline: int,
    store: Datastore,
    uri: str,
) -> tuple[dict[str, Any], DataRef | None]:
    """Answer one request: the response's data and, if any, its dataset."""
    settings = settings_of(request)
    matrix = model.as_matrix(settings)
    if len(matrix) > max_samples:
        raise RequestError(
            f"the request asks about {len(matrix)} samples; at most {max_samples} "
            "per request (config max_request); split it"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prediction = model.predict(
            matrix, samples=request.samples, policy=policy, images=request.images
        )
    for warning in caught:
        log.warning("%s", warning.message)

    n = len(prediction)
    scalars_inline = n * len(model.outputs) * 2 <= inline
    data: dict[str, Any] = {
        "model": model.ref.dump() if model.ref else None,
        "samples": n,
        "uncertainty": model.uncertainty.method,
        "out_of_range": prediction.flagged(),
        "policy": prediction.actions,
    }
    if scalars_inline:
        data["outputs"] = {
            o.name: {
                "mean": prediction.mean[o.name].tolist(),
                "std": None
                if model.uncertainty.method == "none"
                else prediction.std[o.name].tolist(),
                "unit": o.unit,
            }
            for o in model.outputs
        }
    else:
        data["outputs"] = None
        data["note"] = (
            f"{n} samples x {len(model.outputs)} outputs are more than {inline} "
            "values inline; the outputs are in the referenced dataset"
        )

    ref = None
    if prediction.image is not None or not scalars_inline:
        ds = prediction_dataset(model, prediction)
        ref = store.write_dataset(ds, uri)
        data["dataset"] = {"variables": sorted(map(str, ds.data_vars))}
    return data, ref


def prediction_dataset(model: SurrogateModel, prediction: Prediction) -> xr.Dataset:
    """A prediction as a dataset along ``sample``: the settings evaluated,
    each output's mean and ``<name>_std``, and the image with its coordinates."""
    variables: dict[str, Any] = {}
    for j, s in enumerate(model.settings):
        variables[s.name] = (
            "sample",
            prediction.x[:, j],
            {"units": s.unit, "role": "setting", "valid_range": list(s.range)},
        )
    variables["out_of_range"] = (
        ("sample",),
        prediction.out_of_range.any(1),
        {"long_name": "a setting lay outside the model's training range"},
    )
    for o in model.outputs:
        variables[o.name] = ("sample", prediction.mean[o.name], _attrs(o, "predicted"))
        variables[f"{o.name}_std"] = (
            "sample",
            prediction.std[o.name],
            _attrs(o, "standard deviation of"),
        )
    coords: dict[str, Any] = {}
    image = model.image
    if image is not None and prediction.image is not None:
        dims = ("sample", *image.dims)
        variables[image.name] = (
            dims,
            prediction.image.astype(np.float32),
            _attrs(image, "predicted"),
        )
        assert prediction.image_std is not None
        variables[f"{image.name}_std"] = (
            dims,
            prediction.image_std.astype(np.float32),
            _attrs(image, "standard deviation of"),
        )
        units = model.variables.coord_units or {}
        for dim, values in (model.variables.coords or {}).items():
            coords[dim] = (dim, np.asarray(values), {"units": units.get(dim, "")})
    attrs = {
        "model": model.ref.uri if model.ref else "",
        "uncertainty": model.uncertainty.method,
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _attrs(output: Output, what: str) -> dict[str, Any]:
    return {
        "units": output.unit,
        "role": "output",
        "long_name": f"{what} {output.description or output.name}",
    }


class ServedModel:
    """The model a service answers with, replaced whole under a lock.

    A newer model is loaded completely before :meth:`offer` swaps the
    reference, so a request always meets one complete model, old or new.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: SurrogateModel | None = None

    @property
    def model(self) -> SurrogateModel | None:
        with self._lock:
            return self._model

    def offer(self, model: SurrogateModel, *, own: bool = False) -> bool:
        """Serve ``model`` if it may replace the served one; True if it does.

        A model replaces the served one when it maps the same settings to the
        same outputs and was created later; ``own`` (a model this service
        just trained) skips the age check.  A model for other variables is
        refused with :class:`RequestError`.
        """
        with self._lock:
            current = self._model
            if current is not None:
                _check_same_variables(current, model)
                if not own and model.created <= current.created:
                    log.info(
                        "model %s is not newer than the served %s; keeping it",
                        _name(model),
                        _name(current),
                    )
                    return False
            self._model = model
        log.info("serving surrogate %s", _name(model))
        return True


def _check_same_variables(current: SurrogateModel, new: SurrogateModel) -> None:
    def signature(m: SurrogateModel) -> tuple[list[str], list[str], str | None]:
        # Requests name their settings, so the order does not matter.
        return (
            sorted(s.name for s in m.settings),
            sorted(o.name for o in m.outputs),
            m.image.name if m.image else None,
        )

    if signature(current) != signature(new):
        raise RequestError(
            f"model {_name(new)} maps {signature(new)}, but the served model "
            f"{_name(current)} maps {signature(current)}; a service serves one set "
            "of outputs, so send this model to another surrogate service"
        )


def _name(model: SurrogateModel) -> str:
    return model.ref.uri if model.ref else "(unsaved)"
