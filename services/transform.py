"""``transform``: turn a dataset into another, by reference.

On each event that carries a dataset reference it opens the dataset, applies
the configured steps in order, writes the result as a new dataset and emits
its reference.  The steps cover the everyday reshaping between services:
keep or drop variables, rename, scale and offset with units, reduce over a
dimension, select a range of samples.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import xarray as xr
from pydantic import Field

from wakefield.config import StrictModel
from wakefield.errors import ServiceError
from wakefield.events import Event
from wakefield.service import DATASET_READY, HandlerContext, Service

log = logging.getLogger(__name__)


class Keep(StrictModel):
    op: Literal["keep"]
    variables: list[str] = Field(min_length=1)


class Drop(StrictModel):
    op: Literal["drop"]
    variables: list[str] = Field(min_length=1)


class Rename(StrictModel):
    op: Literal["rename"]
    names: dict[str, str] = Field(min_length=1)
    """Old name -> new name."""


class Affine(StrictModel):
    """``variable * scale + offset``, optionally with a new unit."""

    op: Literal["affine"]
    variable: str
    scale: float = 1.0
    offset: float = 0.0
    units: str | None = None


class Reduce(StrictModel):
    op: Literal["reduce"]
    dim: str
    how: Literal["mean", "std", "min", "max", "sum", "median"] = "mean"


class Slice(StrictModel):
    op: Literal["slice"]
    dim: str = "sample"
    start: int | None = None
    stop: int | None = None


Step = Annotated[
    Keep | Drop | Rename | Affine | Reduce | Slice, Field(discriminator="op")
]


class TransformConfig(StrictModel):
    steps: list[Step] = Field(min_length=1)
    """Applied in order to the incoming dataset."""
    name: str = Field(default="transformed.zarr", pattern=r"^[A-Za-z0-9._-]+$")
    """File name of the dataset written for each event."""


class Transform(Service):
    """Turns each referenced dataset into a new one."""

    kind = "transform"
    Config = TransformConfig
    summary = "Turn each referenced dataset into a new one (keep, drop, rename, affine, reduce, slice)."
    inputs = {"datasets": "events whose dataref is a dataset"}
    outputs = {
        "datasets": "org.wakefield.dataset.ready with the new dataset's reference"
    }

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        if event.dataref is None:
            raise ServiceError(
                f"event {event.id} of type {event.type} carries no dataset reference"
            )
        config: TransformConfig = self.config  # type: ignore[assignment]

        ds = ctx.datastore.open_dataset(event.dataref)
        for i, step in enumerate(config.steps):
            try:
                ds = apply(ds, step)
            except (KeyError, ValueError) as exc:
                raise ServiceError(
                    f"step {i} ({step.op}) failed on {event.dataref.uri}: {exc}"
                ) from exc

        ref = ctx.datastore.write_dataset(ds.load(), ctx.dataset_uri(config.name))
        ctx.emit(
            "datasets",
            DATASET_READY,
            {"variables": sorted(map(str, ds.data_vars)), "sizes": dict(ds.sizes)},
            dataref=ref,
        )


def apply(ds: xr.Dataset, step: StrictModel) -> xr.Dataset:
    """One step on a dataset."""
    match step:
        case Keep(variables=names):
            return ds[names]
        case Drop(variables=names):
            return ds.drop_vars(names)
        case Rename(names=names):
            return ds.rename(names)
        case Affine(variable=name, scale=scale, offset=offset, units=units):
            attrs = dict(ds[name].attrs)
            if units is not None:
                attrs["units"] = units
            return ds.assign({name: (ds[name] * scale + offset).assign_attrs(attrs)})
        case Reduce(dim=dim, how=how):
            return getattr(ds, how)(dim=dim, keep_attrs=True)
        case Slice(dim=dim, start=start, stop=stop):
            return ds.isel({dim: slice(start, stop)})
    raise ValueError(f"unknown step {step!r}")
