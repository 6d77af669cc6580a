"""A trained surrogate: its networks, variables and normalisation, kept as an
artifact that loads without running pickled code.

An artifact is a folder in the datastore with three files:

``model.json``
    the format tag, the settings (with units, ranges and out-of-range
    policies), the outputs, the image output and its coordinates, the
    architecture, the normalisation, the uncertainty method, the training
    config, the test metrics' summary and the dataset it learned from
    (reference and content hash);
``weights.pt``
    the ensemble's ``state_dict``, written with ``torch.save`` and read
    with ``torch.load(..., weights_only=True)``;
``metrics.json``
    the full metrics and the learning curves.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError
from torch import Tensor

from wakefield.datastore import Datastore
from wakefield.errors import ExtrapolationWarning, WakefieldError
from wakefield.events import DataRef, decode_data, json_dumps
from wakefield.variables import Output, Setting

from .config import Policy, TrainConfig, UncertaintyConfig
from .data import FloatArray, Normalisation, Variables
from .errors import ArtifactError, ExtrapolationError, RequestError
from .metrics import Metrics
from .network import Architecture, Ensemble

log = logging.getLogger(__name__)

FORMAT = "wakefield.surrogate/1"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
METRICS_FILE = "metrics.json"
_BLOCK = 2048
"""Samples per forward pass in :meth:`SurrogateModel.predict`."""

SettingsInput = Mapping[str, Any] | npt.ArrayLike


@dataclass(frozen=True)
class Prediction:
    """A surrogate's answer for a batch of samples, in physical units."""

    settings: list[str]
    x: FloatArray
    """The settings the model was evaluated at, samples x settings (clipped
    values where the policy is ``clip``)."""
    mean: dict[str, FloatArray]
    """Each scalar output's prediction, one value per sample."""
    std: dict[str, FloatArray]
    """Each scalar output's standard deviation (NaN without an uncertainty
    method)."""
    out_of_range: npt.NDArray[np.bool_]
    """Samples x settings: True where the requested value lay outside the
    setting's training range."""
    actions: dict[str, Policy]
    """The policy applied to each setting that was out of range."""
    image: FloatArray | None = None
    """The image output's prediction, samples x rows x columns."""
    image_std: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def flagged(self) -> list[dict[str, Any]]:
        """One entry per out-of-range sample: its index and the settings."""
        rows = np.flatnonzero(self.out_of_range.any(1))
        return [
            {
                "sample": int(i),
                "settings": [
                    self.settings[j] for j in np.flatnonzero(self.out_of_range[i])
                ],
            }
            for i in rows
        ]


class SurrogateModel:
    """Settings to outputs in milliseconds, with a standard deviation.

    Build one with :func:`~wakefield.services.surrogate.train` or load one
    with :meth:`load`.  :meth:`predict` takes numpy and returns numpy;
    :meth:`torch_forward` is the differentiable path for optimizers.
    """

    def __init__(
        self,
        *,
        variables: Variables,
        normalisation: Normalisation,
        architecture: Architecture,
        ensemble: Ensemble,
        uncertainty: UncertaintyConfig,
        training: TrainConfig | None = None,
        metrics: Metrics | None = None,
        dataset: DataRef | None = None,
        created: str | None = None,
        ref: DataRef | None = None,
    ) -> None:
        self.variables = variables
        self.normalisation = normalisation
        self.architecture = architecture
        self.ensemble = ensemble.eval().requires_grad_(False)
        self.uncertainty = uncertainty
        self.training = training
        self.metrics = metrics
        self.dataset = dataset
        self.created = created or datetime.now(UTC).isoformat()
        self.ref = ref
        """Where this model is stored, once saved or when loaded."""

    def __repr__(self) -> str:
        where = self.ref.uri if self.ref else "unsaved"
        return (
            f"SurrogateModel({[s.name for s in self.settings]} -> "
            f"{[o.name for o in self.outputs]}"
            f"{' + ' + self.image.name if self.image else ''}, {where})"
        )

    # What it maps

    @property
    def settings(self) -> list[Setting]:
        """The inputs, in order, with units and training ranges."""
        return list(self.variables.settings)

    @property
    def outputs(self) -> list[Output]:
        """The scalar outputs, in order."""
        return list(self.variables.outputs)

    @property
    def image(self) -> Output | None:
        return self.variables.image

    # Scaling (physical units <-> [-1, 1]); numpy arrays or torch tensors

    def scale_inputs(self, x: Any) -> Any:
        """Settings (samples x settings, physical units) to the network's [-1, 1]."""
        return self.normalisation.scale_inputs(x)

    def unscale_inputs(self, x: Any) -> Any:
        return self.normalisation.unscale_inputs(x)

    def scale_outputs(self, y: Any) -> Any:
        """Scalar outputs (samples x outputs, physical units) to the network's scale."""
        return self.normalisation.scale_outputs(y)

    def unscale_outputs(self, y: Any) -> Any:
        """The network's scaled scalar outputs to physical units."""
        return self.normalisation.unscale_outputs(y)

    # Predictions

    def torch_forward(self, x_physical: Tensor) -> Tensor:
        """Scalar outputs in physical units from settings in physical units.

        Differentiable with autograd (gradients flow to ``x_physical``, not to
        the weights); samples x settings in, samples x outputs out (a 1-D
        tensor in gives a 1-D tensor out), in ``x_physical``'s dtype.  The
        ensemble mean; with MC dropout, the network with dropout off.  No
        range policy applies: keep ``x_physical`` inside the settings' ranges.
        """
        single = x_physical.ndim == 1
        x = x_physical.unsqueeze(0) if single else x_physical
        if x.shape[-1] != len(self.settings):
            raise RequestError(
                f"torch_forward takes samples x {len(self.settings)} settings "
                f"({[s.name for s in self.settings]}); got shape {tuple(x_physical.shape)}"
            )
        scaled = self.normalisation.scale_inputs(x)
        members = self.ensemble.scalars(scaled.to(torch.float32)).to(x.dtype)
        y = self.normalisation.unscale_outputs(members).mean(0)
        return y[0] if single else y

    def predict(
        self,
        x: SettingsInput,
        *,
        samples: int | None = None,
        policy: Mapping[str, Policy] | None = None,
        images: bool = True,
    ) -> Prediction:
        """Predict every scalar output (and the image) for a batch of settings.

        ``x`` maps each setting's name to a value or a 1-D array (scalars are
        repeated to the arrays' length), or is an array of samples x settings
        in the order of :attr:`settings`.  ``samples`` sets the passes of MC
        dropout.  ``policy`` overrides a setting's ``out_of_range``: values
        outside the training range raise :class:`ExtrapolationError`
        (``error``), are predicted with an :class:`ExtrapolationWarning`
        (``warn``) or are clipped to the range (``clip``); every one is
        flagged in :attr:`Prediction.out_of_range`.
        """
        matrix = self.as_matrix(x)
        used, flags, actions = self.apply_policy(matrix, policy or {})
        passes = samples if samples is not None else self.uncertainty.samples
        if passes < 2 and self.uncertainty.method == "mc_dropout":
            raise RequestError(
                f"samples must be 2 or more for MC dropout; got {passes}"
            )

        with torch.no_grad():
            blocks = [
                self._members(used[start : start + _BLOCK], passes, images)
                for start in range(0, len(used), _BLOCK)
            ]
        mean, std, image, image_std = self._summarise(blocks)
        return Prediction(
            settings=[s.name for s in self.settings],
            x=used,
            mean=mean,
            std=std,
            out_of_range=flags,
            actions=actions,
            image=image,
            image_std=image_std,
        )

    def _members(
        self, x: FloatArray, passes: int, images: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Every member's (or MC pass's) prediction in physical units."""
        scaled = torch.as_tensor(
            self.normalisation.scale_inputs(x), dtype=torch.float32
        )
        want_image = images and self.image is not None
        if self.uncertainty.method == "mc_dropout":
            scalars, image = self._mc_dropout(scaled, passes, want_image)
        elif want_image:
            scalars, image = self.ensemble(scaled)
        else:
            scalars, image = self.ensemble.scalars(scaled), None
        physical = self.normalisation.unscale_outputs(scalars.double())
        if image is not None:
            image = self.normalisation.unscale_image(image.double())
        return physical, image

    def _mc_dropout(
        self, scaled: Tensor, passes: int, images: bool
    ) -> tuple[Tensor, Tensor | None]:
        net = self.ensemble.members[0]
        dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
        scalars, pictures = [], []
        # Seeded masks: one request gets one answer, here or after a reload.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.uncertainty.seed)
            try:
                for m in dropouts:
                    m.train()
                for _ in range(passes):
                    if images:
                        s, p = net(scaled)
                        pictures.append(p)
                    else:
                        s = net.scalars(scaled)  # type: ignore[operator]
                    scalars.append(s)
            finally:
                for m in dropouts:
                    m.eval()
        return torch.stack(scalars), torch.stack(pictures) if pictures else None

    def _summarise(
        self, blocks: list[tuple[Tensor, Tensor | None]]
    ) -> tuple[
        dict[str, FloatArray],
        dict[str, FloatArray],
        FloatArray | None,
        FloatArray | None,
    ]:
        """Mean and standard deviation over members (or MC passes)."""
        scalars = torch.cat([b[0] for b in blocks], dim=1).numpy()
        spread = self.uncertainty.method != "none" and scalars.shape[0] > 1
        mean = scalars.mean(0)
        std = scalars.std(0) if spread else np.full_like(mean, np.nan)
        names = [o.name for o in self.outputs]
        image = image_std = None
        if blocks and blocks[0][1] is not None:
            pictures = torch.cat([b[1] for b in blocks], dim=1).numpy()  # type: ignore[misc]
            image = pictures.mean(0)
            image_std = pictures.std(0) if spread else np.full_like(image, np.nan)
        return (
            {n: mean[:, j] for j, n in enumerate(names)},
            {n: std[:, j] for j, n in enumerate(names)},
            image,
            image_std,
        )

    def as_matrix(self, x: SettingsInput) -> FloatArray:
        """Settings as samples x settings (physical units), checked."""
        names = [s.name for s in self.settings]
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            unknown = sorted(set(x) - set(names))
            if missing or unknown:
                raise RequestError(
                    f"settings must name exactly {names}; missing {missing}, "
                    f"unknown {unknown}"
                )
            columns = [_column(n, x[n]) for n in names]
            lengths = {len(c) for c in columns if c.ndim == 1}
            if len(lengths) > 1:
                sizes = {
                    n: len(c) for n, c in zip(names, columns, strict=True) if c.ndim
                }
                raise RequestError(
                    f"every setting must have the same number of values (or one "
                    f"value for all samples); got {sizes}"
                )
            n = lengths.pop() if lengths else 1
            matrix = np.stack([np.broadcast_to(c, (n,)) for c in columns], 1)
        else:
            try:
                matrix = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise RequestError(f"settings must be numbers: {exc}") from exc
            if matrix.ndim == 1:
                matrix = matrix[None, :]
            if matrix.ndim != 2 or matrix.shape[1] != len(names):
                raise RequestError(
                    f"settings as an array must be samples x {len(names)} "
                    f"(in the order {names}); got shape {np.shape(x)}"
                )
        if len(matrix) == 0:
            raise RequestError("the request holds no samples")
        bad = ~np.isfinite(matrix)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise RequestError(
                f"settings must be finite numbers; {names[j]} is {matrix[i, j]} "
                f"in sample {i}"
            )
        return np.array(matrix, dtype=np.float64)

    def apply_policy(
        self, x: FloatArray, policy: Mapping[str, Policy]
    ) -> tuple[FloatArray, npt.NDArray[np.bool_], dict[str, Policy]]:
        """Flag values outside the training ranges and apply each setting's
        policy; returns the values to evaluate, the flags and the actions."""
        unknown = sorted(set(policy) - {s.name for s in self.settings})
        if unknown:
            raise RequestError(
                f"out_of_range names {unknown}, which are not settings of this "
                f"model; its settings: {[s.name for s in self.settings]}"
            )
        low = self.normalisation.input_low
        high = self.normalisation.input_high
        flags = (x < low) | (x > high)
        used = x.copy()
        actions: dict[str, Policy] = {}
        refused, warned = [], []
        for j, setting in enumerate(self.settings):
            rows = np.flatnonzero(flags[:, j])
            if not len(rows):
                continue
            action = policy.get(setting.name, setting.out_of_range)
            actions[setting.name] = action
            first = rows[0]
            text = (
                f"{setting.name} = {x[first, j]:.6g} {setting.unit} in sample {first}"
                f"{f' (and {len(rows) - 1} more)' if len(rows) > 1 else ''}, range "
                f"[{setting.low:.6g}, {setting.high:.6g}] {setting.unit}"
            ).replace("  ", " ")
            if action == "error":
                refused.append(text)
            elif action == "warn":
                warned.append(text)
            else:
                used[:, j] = np.clip(used[:, j], setting.low, setting.high)
        if refused:
            flagged = [
                {
                    "sample": int(i),
                    "settings": [
                        self.settings[j].name for j in np.flatnonzero(flags[i])
                    ],
                }
                for i in np.flatnonzero(flags.any(1))
            ]
            raise ExtrapolationError(
                "settings outside the model's training ranges: "
                + "; ".join(refused)
                + ". Send values inside the ranges, or set out_of_range to clip "
                "or warn for these settings",
                flagged,
            )
        if warned:
            warnings.warn(
                "predicting outside the training ranges (extrapolating): "
                + "; ".join(warned),
                ExtrapolationWarning,
                stacklevel=3,
            )
        return used, flags, actions

    # Storage

    def describe(self) -> dict[str, Any]:
        """The content of ``model.json``."""
        v = self.variables
        return {
            "format": FORMAT,
            "created": self.created,
            "settings": [s.dump() for s in v.settings],
            "outputs": [o.dump() for o in v.outputs],
            "image": v.image.dump() if v.image else None,
            "image_coords": v.coords,
            "image_coord_units": v.coord_units,
            "architecture": self.architecture.to_dict(),
            "members": len(self.ensemble.members),
            "uncertainty": self.uncertainty.dump(),
            "normalisation": self.normalisation.to_dict(),
            "training": self.training.dump() if self.training else None,
            "metrics": self.metrics.summary() if self.metrics else None,
            "dataset": self.dataset.dump() if self.dataset else None,
            "packages": _packages(),
        }

    def files(self) -> dict[str, bytes]:
        """The artifact's files."""
        buffer = io.BytesIO()
        torch.save(self.ensemble.state_dict(), buffer)
        files = {
            MODEL_FILE: _json(self.describe()),
            WEIGHTS_FILE: buffer.getvalue(),
        }
        if self.metrics is not None:
            files[METRICS_FILE] = _json(self.metrics.to_dict())
        return files

    def save(self, datastore: Datastore, uri: str) -> DataRef:
        """Publish this model as an artifact at ``uri``; returns its reference."""
        meta = {
            "format": FORMAT,
            "created": self.created,
            "settings": [s.name for s in self.settings],
            "outputs": [o.name for o in self.outputs],
            "image": self.image.name if self.image else None,
            "dataset": self.dataset.dump() if self.dataset else None,
        }
        self.ref = datastore.write_artifact(self.files(), uri, meta=meta)
        log.info("surrogate saved at %s", uri)
        return self.ref

    @classmethod
    def load(cls, datastore: Datastore, ref: DataRef | str) -> SurrogateModel:
        """Load an artifact (its content hash checked when ``ref`` is a DataRef)."""
        try:
            description = _read_json(datastore.read_artifact(ref, MODEL_FILE))
            weights = datastore.read_artifact(ref, WEIGHTS_FILE)
        except FileNotFoundError as exc:
            raise ArtifactError(
                f"{_uri(ref)} is not a surrogate artifact: {exc}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ArtifactError(
                f"{_uri(ref)}: {MODEL_FILE} is not valid JSON: {exc}"
            ) from exc
        try:
            metrics = Metrics.from_dict(
                _read_json(datastore.read_artifact(ref, METRICS_FILE))
            )
        except (FileNotFoundError, KeyError, TypeError):
            metrics = None
        model = cls.from_parts(description, weights, metrics=metrics, where=_uri(ref))
        model.ref = ref if isinstance(ref, DataRef) else datastore.ref(ref)
        log.info("surrogate loaded from %s", model.ref.uri)
        return model

    @classmethod
    def from_parts(
        cls,
        description: dict[str, Any],
        weights: bytes,
        *,
        metrics: Metrics | None = None,
        where: str = "<model>",
    ) -> SurrogateModel:
        """A model from the content of ``model.json`` and ``weights.pt``."""
        if description.get("format") != FORMAT:
            raise ArtifactError(
                f"{where} has format {description.get('format')!r}; this wakefield "
                f"reads {FORMAT!r}"
            )
        try:
            image = description.get("image")
            variables = Variables(
                settings=[Setting.load(s) for s in description["settings"]],
                outputs=[Output.load(o) for o in description["outputs"]],
                image=Output.load(image) if image else None,
                coords=description.get("image_coords"),
                coord_units=description.get("image_coord_units"),
            )
            architecture = Architecture.from_dict(description["architecture"])
            uncertainty = UncertaintyConfig.load(description["uncertainty"])
            training = description.get("training")
            dataset = description.get("dataset")
            normalisation = Normalisation.from_dict(description["normalisation"])
            ensemble = Ensemble(architecture, int(description["members"]))
            state = torch.load(
                io.BytesIO(weights), weights_only=True, map_location="cpu"
            )
            ensemble.load_state_dict(state, strict=True)
        except (KeyError, TypeError, ValueError, ValidationError, RuntimeError) as exc:
            raise ArtifactError(f"{where} cannot be loaded: {exc}") from exc
        except WakefieldError:
            raise
        except Exception as exc:  # torch's unpickler refusing foreign content
            raise ArtifactError(
                f"{where}: {WEIGHTS_FILE} cannot be read safely: {exc}"
            ) from exc
        return cls(
            variables=variables,
            normalisation=normalisation,
            architecture=architecture,
            ensemble=ensemble,
            uncertainty=uncertainty,
            training=TrainConfig.load(training) if training else None,
            metrics=metrics,
            dataset=DataRef.load(dataset) if dataset else None,
            created=description.get("created"),
        )

    def to_lume(self) -> Any:
        """This model's scalar outputs as a LUME ``TorchModel`` (``wakefield[lume]``)."""
        from .lume import to_lume

        return to_lume(self)


def _column(name: str, value: Any) -> npt.NDArray[np.float64]:
    try:
        column = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RequestError(
            f"setting {name} must be a number or a list of numbers: {exc}"
        ) from exc
    if column.ndim > 1:
        raise RequestError(
            f"setting {name} must be a number or a 1-D list; got shape {column.shape}"
        )
    return column


def _json(data: Any) -> bytes:
    return json_dumps(data).encode()


def _read_json(raw: bytes) -> Any:
    return decode_data(json.loads(raw))


def _uri(ref: DataRef | str) -> str:
    return ref.uri if isinstance(ref, DataRef) else ref


def _packages() -> dict[str, str]:
    found = {}
    for name in ("wakefield", "torch", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
