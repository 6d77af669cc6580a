"""The one strict base for everything that comes from YAML or from the bus.

Unknown keys are errors, booleans must be real booleans (``yes`` stays a
string in YAML 1.2 and is refused where a boolean is expected, rather than
quietly read as true), and dumping then loading gives the same object.
Durations and memory sizes are written the way people write them
(``30s``, ``2GiB``) and held as plain numbers (seconds, bytes).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


class StrictModel(BaseModel):
    """Base for every configuration block: unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    def dump(self) -> dict[str, Any]:
        """Plain JSON-ready data that :meth:`load` turns back into this object."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=False)

    @classmethod
    def load(cls, data: Any) -> Self:
        """Validate plain data (from YAML, JSON or :meth:`dump`)."""
        return cls.model_validate(data)


def parse_duration(value: Any) -> float:
    """Seconds from ``12``, ``1.5``, ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(
            "a duration is a number of seconds or a number with a unit "
            "(ms, s, m, h, d), for example '30s' or '5m'"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1024``, ``"512MiB"``, ``"2GiB"``, ``"1.5G"``."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '2GiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match.group(2) or "").lower()
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(
            "a size is a number of bytes or a number with a unit "
            "(KiB, MiB, GiB, TiB, or KB, MB, GB, TB), for example '2GiB'"
        )
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda s: s, return_type=float),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ],
            "description": "seconds, or a number with a unit: ms, s, m, h, d",
        }
    ),
]
"""A duration in seconds; YAML may write ``30s``, ``5m``, ``250ms``."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {
                    "type": "string",
                    "pattern": "^\\s*\\d+(\\.\\d*)?\\s*([KMGTkmgt]i?[Bb]?|[Bb])?\\s*$",
                },
            ],
            "description": "bytes, or a size such as 512MiB or 2GiB",
        }
    ),
]
"""A size in bytes; YAML may write ``512MiB`` or ``2GiB``."""
