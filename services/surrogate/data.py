"""From a scan dataset to training arrays: variables, status, split, scaling.

A scan (see the ``simulation`` kind) keeps its settings and outputs as
variables along ``sample``, tagged with the attribute ``role``; settings
carry ``valid_range``.  Only samples whose ``status`` is 0 are learned
from.  Inputs are scaled to [-1, 1] from the settings' ranges, outputs
from the training split's minimum and maximum, after an optional ``log``
or ``asinh`` transform per output (see :class:`Normalisation`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import xarray as xr

from wakefield.errors import SpecError
from wakefield.variables import Output, Setting

from .config import TrainConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ArrayT = TypeVar("ArrayT", torch.Tensor, FloatArray)


@dataclass(frozen=True)
class Variables:
    """What a surrogate maps from and to, in order."""

    settings: list[Setting]
    outputs: list[Output]
    """Scalar outputs."""
    image: Output | None = None
    coords: dict[str, list[float]] | None = None
    """Coordinate values along the image's two dimensions, where known."""
    coord_units: dict[str, str] | None = None


@dataclass(frozen=True)
class Samples:
    """The good samples of a scan as arrays, in the order of :class:`Variables`."""

    x: FloatArray
    """Settings, samples x settings, physical units."""
    y: FloatArray
    """Scalar outputs, samples x outputs, physical units."""
    image: FloatArray | None
    """Image output, samples x rows x columns, or None."""
    index: npt.NDArray[np.int64]
    """Each row's position along ``sample`` in the dataset."""

    def take(self, rows: npt.NDArray[np.int64]) -> Samples:
        image = None if self.image is None else self.image[rows]
        return Samples(self.x[rows], self.y[rows], image, self.index[rows])

    def __len__(self) -> int:
        return len(self.x)


def _role(ds: xr.Dataset, role: str) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if v.attrs.get("role") == role]


def scan_settings(ds: xr.Dataset) -> dict[str, Setting | None]:
    """Every setting of a scan: the Setting, or None if it was held fixed."""
    declared: dict[str, dict[str, Any]] = {
        str(s.get("name")): s
        for s in ds.attrs.get("settings", [])
        if isinstance(s, dict)
    }
    found: dict[str, Setting | None] = {}
    # The simulator's own order where the scan recorded it.
    present = _role(ds, "setting")
    names = [n for n in declared if n in present]
    names += [n for n in present if n not in names]
    for name in names:
        var = ds[name]
        low, high = _valid_range(ds, name)
        if not low < high:
            found[name] = None
            continue
        default = float(var.attrs.get("default", 0.5 * (low + high)))
        found[name] = Setting(
            name=name,
            unit=str(var.attrs.get("units", "")),
            range=(low, high),
            default=min(max(default, low), high),
            description=str(var.attrs.get("long_name", "")),
            out_of_range=declared.get(name, {}).get("out_of_range", "error"),
        )
    return found


def _valid_range(ds: xr.Dataset, name: str) -> tuple[float, float]:
    valid = ds[name].attrs.get("valid_range")
    if valid is not None and len(valid) == 2:
        return float(valid[0]), float(valid[1])
    values = ds[name].values
    log.warning("setting %s has no valid_range; using its scanned extent", name)
    return float(np.nanmin(values)), float(np.nanmax(values))


def select_variables(ds: xr.Dataset, config: TrainConfig) -> Variables:
    """The settings, scalar outputs and image a config asks for, checked
    against what the scan holds."""
    settings = scan_settings(ds)
    scalars = [
        n
        for n in _role(ds, "output")
        if ds[n].dims == ("sample",)
        and ds[n].dtype.kind == "f"
        and "categories" not in ds[n].attrs
    ]
    images = [n for n in _role(ds, "output") if ds[n].ndim == 3]

    if config.inputs is None:
        chosen = [s for s in settings.values() if s is not None]
    else:
        _known(config.inputs, list(settings), "inputs", "settings")
        fixed = [n for n in config.inputs if settings[n] is None]
        if fixed:
            raise SpecError(
                f"inputs {fixed} were held fixed in this scan, so a model cannot "
                "learn from them; leave them out of inputs"
            )
        chosen = [s for n in config.inputs if (s := settings[n]) is not None]
    if not chosen:
        raise SpecError(
            f"the scan varies no setting (settings: {sorted(settings)}); "
            "a surrogate needs at least one"
        )

    names = scalars if config.outputs is None else list(config.outputs)
    _known(names, scalars, "outputs", "scalar outputs")
    if not names and config.image is None:
        raise SpecError("nothing to learn: no scalar outputs and no image")
    stray = sorted(set(config.transforms) - set(names))
    if stray:
        raise SpecError(
            f"transforms names {stray}, which are not among the outputs learned: "
            f"{names}"
        )
    outputs = [_output(ds[n]) for n in names]

    image = coords = units = None
    if config.image is not None:
        _known([config.image], images, "image", "image outputs")
        var = ds[config.image]
        dims = tuple(str(d) for d in var.dims[1:])
        image = Output(
            name=config.image,
            unit=str(var.attrs.get("units", "")),
            description=str(var.attrs.get("long_name", "")),
            dims=dims,
            shape=tuple(int(var.sizes[d]) for d in dims),
            dtype="float32",
        )
        coords = {
            d: ds[d].values.astype(float).tolist() for d in dims if d in ds.coords
        }
        units = {d: str(ds[d].attrs.get("units", "")) for d in coords}
    return Variables(chosen, outputs, image, coords, units)


def _output(var: xr.DataArray) -> Output:
    return Output(
        name=str(var.name),
        unit=str(var.attrs.get("units", "")),
        description=str(var.attrs.get("long_name", "")),
    )


def _known(names: list[str], allowed: list[str], field: str, what: str) -> None:
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SpecError(
            f"{field}: {unknown} are not {what} of this scan; "
            f"its {what}: {sorted(allowed) or 'none'}"
        )


def good_samples(ds: xr.Dataset, variables: Variables) -> Samples:
    """The samples with ``status == 0`` (all, for a dataset without status)."""
    n = ds.sizes["sample"]
    ok = ds["status"].values == 0 if "status" in ds else np.ones(n, dtype=bool)
    x = np.stack([ds[s.name].values.astype(np.float64) for s in variables.settings], 1)
    if variables.outputs:
        y = np.stack(
            [ds[o.name].values.astype(np.float64) for o in variables.outputs], 1
        )
    else:
        y = np.zeros((n, 0))
    image = None
    if variables.image is not None:
        image = ds[variables.image.name].values.astype(np.float64)

    # A status of 0 with a non-finite value would poison the fit: drop it too.
    finite = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    if image is not None:
        finite &= np.isfinite(image.reshape(n, -1)).all(1)
    dropped = int((ok & ~finite).sum())
    if dropped:
        log.warning(
            "%s samples with status ok hold non-finite values; left out", dropped
        )
    keep = np.flatnonzero(ok & finite)
    log.info("learning from %s of %s samples (status ok)", len(keep), n)
    return Samples(x[keep], y[keep], None if image is None else image[keep], keep)


def split(
    n: int, fractions: tuple[float, float, float], seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices of the training, validation and test parts, seeded."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if fractions[2] > 0:
        n_train = min(n_train, n - n_val - 1)
    if n_train < 2 or n_val < 1:
        raise SpecError(
            f"{n} good samples are too few to split {fractions} into training "
            "(2 or more) and validation (1 or more); scan more samples"
        )
    train = np.sort(order[:n_train])
    val = np.sort(order[n_train : n_train + n_val])
    test = np.sort(order[n_train + n_val :])
    return train, val, test


@dataclass(frozen=True)
class Normalisation:
    """Affine maps of inputs and outputs to [-1, 1], stored with a model.

    Inputs use the settings' ranges.  Outputs are first transformed where
    configured (``log``: the logarithm, for positive peaked outputs;
    ``asinh``: ``asinh(y / s)`` with ``s`` the training data's median of
    ``|y|``, for outputs of either sign with long tails), then mapped from
    the training data's minimum and maximum.  An output that never changed
    keeps a unit half-width, so it scales without dividing by 0.
    """

    input_low: FloatArray
    input_high: FloatArray
    output_low: FloatArray
    """Lowest training value of each output, after its transform."""
    output_high: FloatArray
    transforms: tuple[str, ...]
    """Per output: ``none``, ``log`` or ``asinh``."""
    asinh_scale: FloatArray
    """Per output: ``s`` of the ``asinh`` transform (1 for the others)."""
    image_low: float = 0.0
    image_high: float = 1.0

    @classmethod
    def fit(
        cls, variables: Variables, train: Samples, transforms: Mapping[str, str]
    ) -> Normalisation:
        names = [o.name for o in variables.outputs]
        kinds = tuple(transforms.get(n, "none") for n in names)
        y = train.y
        scale = np.ones(len(names))
        for j, kind in enumerate(kinds):
            if kind == "log" and (y[:, j] <= 0).any():
                raise SpecError(
                    f"transforms: {names[j]} has values <= 0 (lowest "
                    f"{y[:, j].min():.4g}), so it cannot be learned as a "
                    "logarithm; use asinh for outputs of either sign"
                )
            if kind == "asinh":
                typical = float(np.median(np.abs(y[:, j])))
                scale[j] = typical if typical > 0 else 1.0
        partial = cls(
            input_low=np.array([s.low for s in variables.settings]),
            input_high=np.array([s.high for s in variables.settings]),
            output_low=np.zeros(len(names)),
            output_high=np.ones(len(names)),
            transforms=kinds,
            asinh_scale=scale,
        )
        t = partial.transform(y)
        image_low, image_high = 0.0, 1.0
        if train.image is not None:
            image_low, image_high = float(train.image.min()), float(train.image.max())
        return replace(
            partial,
            output_low=t.min(0) if len(t) else partial.output_low,
            output_high=t.max(0) if len(t) else partial.output_high,
            image_low=image_low,
            image_high=image_high,
        )

    @staticmethod
    def _half(low: FloatArray, high: FloatArray) -> FloatArray:
        half = 0.5 * (high - low)
        return np.where(half > 0, half, 1.0)

    def _mask(self, ref: ArrayT, kind: str) -> Any:
        """Booleans per output (an array or a tensor, like ``ref``)."""
        return _like(ref, np.array([t == kind for t in self.transforms], float)) > 0

    def transform(self, y: ArrayT) -> ArrayT:
        """Outputs in physical units to the space they are learned in."""
        out = y
        if "log" in self.transforms:
            mask = self._mask(y, "log")
            out = _where(mask, _call("log", _where(mask, y, _ones_like(y))), out)
        if "asinh" in self.transforms:
            mask = self._mask(y, "asinh")
            out = _where(mask, _call("arcsinh", y / _like(y, self.asinh_scale)), out)
        return out

    def untransform(self, t: ArrayT) -> ArrayT:
        """The inverse of :meth:`transform`."""
        out = t
        if "log" in self.transforms:
            mask = self._mask(t, "log")
            out = _where(mask, _call("exp", _where(mask, t, _zeros_like(t))), out)
        if "asinh" in self.transforms:
            mask = self._mask(t, "asinh")
            # sinh only where it applies: elsewhere t can be huge, and an
            # overflow there would turn the unused branch's gradient into NaN.
            inner = _where(mask, t, _zeros_like(t))
            out = _where(mask, _like(t, self.asinh_scale) * _call("sinh", inner), out)
        return out

    def scale_inputs(self, x: ArrayT) -> ArrayT:
        """Settings (samples x settings, physical units) to [-1, 1]."""
        mid = _like(x, 0.5 * (self.input_low + self.input_high))
        half = _like(x, self._half(self.input_low, self.input_high))
        return (x - mid) / half

    def unscale_inputs(self, x: ArrayT) -> ArrayT:
        mid = _like(x, 0.5 * (self.input_low + self.input_high))
        half = _like(x, self._half(self.input_low, self.input_high))
        return x * half + mid

    def scale_outputs(self, y: ArrayT) -> ArrayT:
        """Scalar outputs (samples x outputs, physical units) to [-1, 1]."""
        t = self.transform(y)
        mid = _like(t, 0.5 * (self.output_low + self.output_high))
        half = _like(t, self._half(self.output_low, self.output_high))
        return (t - mid) / half

    def unscale_outputs(self, s: ArrayT) -> ArrayT:
        """Scaled outputs back to physical units."""
        mid = _like(s, 0.5 * (self.output_low + self.output_high))
        half = _like(s, self._half(self.output_low, self.output_high))
        return self.untransform(s * half + mid)

    def scale_image(self, image: ArrayT) -> ArrayT:
        mid = 0.5 * (self.image_low + self.image_high)
        half = 0.5 * (self.image_high - self.image_low) or 1.0
        return (image - mid) / half

    def unscale_image(self, s: ArrayT) -> ArrayT:
        mid = 0.5 * (self.image_low + self.image_high)
        half = 0.5 * (self.image_high - self.image_low) or 1.0
        return s * half + mid

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_low": self.input_low.tolist(),
            "input_high": self.input_high.tolist(),
            "output_low": self.output_low.tolist(),
            "output_high": self.output_high.tolist(),
            "transforms": list(self.transforms),
            "asinh_scale": self.asinh_scale.tolist(),
            "image_low": self.image_low,
            "image_high": self.image_high,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        return cls(
            input_low=np.asarray(data["input_low"], dtype=np.float64),
            input_high=np.asarray(data["input_high"], dtype=np.float64),
            output_low=np.asarray(data["output_low"], dtype=np.float64),
            output_high=np.asarray(data["output_high"], dtype=np.float64),
            transforms=tuple(str(t) for t in data["transforms"]),
            asinh_scale=np.asarray(data["asinh_scale"], dtype=np.float64),
            image_low=float(data["image_low"]),
            image_high=float(data["image_high"]),
        )


def _like(ref: ArrayT, values: FloatArray) -> ArrayT:
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    return np.asarray(values, dtype=ref.dtype if ref.dtype.kind == "f" else np.float64)


def _where(mask: ArrayT, a: ArrayT, b: ArrayT) -> ArrayT:
    if isinstance(mask, torch.Tensor):
        return torch.where(mask, a, b)
    return np.where(mask, a, b)


def _ones_like(a: ArrayT) -> ArrayT:
    return torch.ones_like(a) if isinstance(a, torch.Tensor) else np.ones_like(a)


def _zeros_like(a: ArrayT) -> ArrayT:
    return torch.zeros_like(a) if isinstance(a, torch.Tensor) else np.zeros_like(a)


def _call(name: str, a: ArrayT) -> ArrayT:
    """``np.<name>`` on arrays, ``torch.<name>`` on tensors."""
    if isinstance(a, torch.Tensor):
        return getattr(torch, name)(a)  # type: ignore[no-any-return]
    return getattr(np, name)(a)  # type: ignore[no-any-return]
