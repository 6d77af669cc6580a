"""Named, unit-carrying variables: the settings a scan samples and the outputs
a simulator or model computes.

They follow the LUME variable style (a name, a default, a range, a unit), so
that a model trained by wakefield can be handed to LUME tools unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, StrictBool, model_validator

from .config import StrictModel


class Setting(StrictModel):
    """A machine input a user can set, such as a cavity phase in degrees."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Identifier used in datasets, events and models."""
    unit: str = ""
    """SI unit, or ``deg`` for RF phases and ``%`` for relative amplitudes."""
    range: tuple[float, float]
    """Lowest and highest allowed value, in ``unit``."""
    default: float
    """The nominal value, in ``unit``; it must lie inside ``range``."""
    description: str = ""
    out_of_range: Literal["error", "warn", "clip"] = "error"
    """What a model does when asked about a value outside ``range``."""

    @model_validator(mode="after")
    def _check_range(self) -> Setting:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(
                f"range must be two finite numbers, low < high; got {self.range}"
            )
        if not low <= self.default <= high:
            raise ValueError(f"default {self.default} lies outside range {self.range}")
        return self

    @property
    def low(self) -> float:
        return self.range[0]

    @property
    def high(self) -> float:
        return self.range[1]


class Output(StrictModel):
    """A computed or measured beam quantity, a scalar or an array per sample."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    unit: str = ""
    description: str = ""
    dims: tuple[str, ...] = ()
    """Names of the array dimensions beyond ``sample``; empty for a scalar."""
    shape: tuple[int, ...] = ()
    """Length of each of ``dims``."""
    read_only: StrictBool = True
    dtype: Literal["float32", "float64", "int32", "int64", "bool"] = "float64"
    categories: tuple[str, ...] = ()
    """For a categorical output stored as integer codes: the name of each code."""

    @model_validator(mode="after")
    def _check_shape(self) -> Output:
        if len(self.dims) != len(self.shape):
            raise ValueError(
                f"dims {self.dims} and shape {self.shape} differ in length"
            )
        return self

    @property
    def is_scalar(self) -> bool:
        return not self.dims
