"""Surrogates: PyTorch models of a simulation scan, trained and served.

The ``surrogate`` service kind (:class:`~.service.Surrogate`) trains on a
dataset-ready event and answers predict requests; this package is also a
Python API for code that needs a surrogate without the service::

    from wakefield.datastore import Datastore
    from wakefield.services.surrogate import SurrogateModel, train

    model, metrics = train(ds, {"image": "lps", "training": {"epochs": 200}})
    metrics.outputs["bunch_length"].mae_percent       # test MAE, % of range
    ref = model.save(Datastore(".wakefield/data"), "models/linac")

    model = SurrogateModel.load(store, ref)           # no pickled code runs
    model.settings                                    # list[Setting], inputs in order
    model.outputs                                     # list[Output], the scalars
    p = model.predict({"l1_phase": [-25.0, -30.0], "l1_voltage": 100.0, ...})
    p.mean["bunch_length"], p.std["bunch_length"]     # numpy, physical units
    p.out_of_range                                    # samples x settings flags
    y = model.torch_forward(x)                        # torch, differentiable
    model.scale_inputs(x), model.unscale_outputs(s)   # [-1, 1] <-> physical

``train(ds, config, on_epoch=None, *, dataset=None) -> (SurrogateModel,
Metrics)``
    trains from an ``xarray.Dataset`` scan (settings and outputs along
    ``sample`` with ``role`` attributes; samples with ``status != 0`` left
    out).  ``config`` is a :class:`TrainConfig` or its plain-data form;
    ``on_epoch`` receives an :class:`EpochReport` after every epoch.
``SurrogateModel.load(datastore, ref) -> SurrogateModel``
    an artifact written by :meth:`SurrogateModel.save` or the service.
``SurrogateModel.predict(x, *, samples=None, policy=None, images=True) ->
Prediction``
    ``x`` is a mapping of setting name to values or an array of samples x
    settings; the result holds the mean and standard deviation of every
    scalar output (and the image), in physical units, as numpy arrays.
    Settings outside the training range follow each setting's
    ``out_of_range`` policy (or ``policy``): :class:`ExtrapolationError`,
    an :class:`~wakefield.errors.ExtrapolationWarning`, or clipping.
``SurrogateModel.torch_forward(x_physical) -> torch.Tensor``
    samples x settings to samples x scalar outputs, both in physical units,
    differentiable with autograd (the ensemble mean).
``SurrogateModel.scale_inputs / unscale_inputs / scale_outputs /
unscale_outputs``
    the normalisation stored with the model, on numpy arrays or tensors.
"""

from .config import (
    NetworkConfig,
    SurrogateConfig,
    TrainConfig,
    TrainingConfig,
    UncertaintyConfig,
)
from .errors import ArtifactError, ExtrapolationError, RequestError
from .metrics import Curve, Metrics, OutputError
from .model import Prediction, SurrogateModel
from .training import EpochReport, train

__all__ = [
    "ArtifactError",
    "Curve",
    "EpochReport",
    "ExtrapolationError",
    "Metrics",
    "NetworkConfig",
    "OutputError",
    "Prediction",
    "RequestError",
    "SurrogateConfig",
    "SurrogateModel",
    "TrainConfig",
    "TrainingConfig",
    "UncertaintyConfig",
    "train",
]
