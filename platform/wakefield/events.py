"""Events: CloudEvents 1.0 envelopes that carry small data and a reference.

Bulk data never rides on the bus.  It is written to the datastore, and the
event carries a :class:`DataRef` (the dataset's URI and content hash): the
claim-check pattern.  Besides the CloudEvents attributes an event carries
the run id, a correlation id (shared by every event a request causes) and a
causation id (the event that directly caused it).

An event's ``data`` is strict JSON.  Non-finite floats, which JSON cannot
hold, are encoded explicitly as ``{"$float": "nan"}`` (or ``"inf"``,
``"-inf"``) and decoded back, so no bare ``NaN`` token ever reaches a
consumer written in another language.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from .config import StrictModel
from .errors import EventError

SPECVERSION = "1.0"
_FLOAT_TAG = "$float"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

# Deterministic ids: an event caused by another gets an id derived from the
# cause, the service and its position, so a redelivered event that is handled
# again produces the very same ids and consumers drop the duplicates.
_ID_NAMESPACE = uuid.UUID("6c1f4f8e-3f0b-4a55-9a4e-2f5b8d9e7a10")


class DataRef(StrictModel):
    """A reference to a dataset or artifact in the datastore."""

    uri: str
    """Location relative to the datastore root, e.g. ``datasets/run-1/scan.zarr``."""
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """Content hash of everything stored at ``uri``."""
    kind: Literal["dataset", "artifact"] = "dataset"


class Event(StrictModel):
    """One message on a topic: CloudEvents 1.0 attributes plus wakefield's."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1)
    """Who emitted it: ``wakefield://<workflow>/<service>`` or a user's URI."""
    type: str = Field(min_length=1)
    """What happened, reverse-DNS style, e.g. ``org.wakefield.dataset.ready``."""
    specversion: Literal["1.0"] = "1.0"
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: Any = None
    dataref: DataRef | None = None
    runid: str | None = None
    correlationid: str | None = None
    causationid: str | None = None

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def caused(
        self,
        *,
        source: str,
        type: str,
        data: Any = None,
        index: int = 0,
        dataref: DataRef | None = None,
        subject: str | None = None,
    ) -> Event:
        """A new event caused by this one, with a deterministic id."""
        return Event(
            id=str(uuid.uuid5(_ID_NAMESPACE, f"{self.id}/{source}/{type}/{index}")),
            source=source,
            type=type,
            data=data,
            dataref=dataref,
            subject=subject,
            runid=self.runid,
            correlationid=self.correlationid or self.id,
            causationid=self.id,
        )

    def to_json(self) -> bytes:
        """The structured-mode JSON of this event; data made strict."""
        body = self.model_dump(mode="json", exclude_none=True)
        body["data"] = encode_data(self.data)
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Decode structured-mode JSON; raises :class:`EventError` with the reason."""
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"event is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise EventError(f"event must be a JSON object, got {type(body).__name__}")
        body["data"] = decode_data(body.get("data"))
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise EventError(f"event does not match the envelope: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f'bare {name} is not JSON; encode it as {{"{_FLOAT_TAG}": "nan"}}')


def encode_data(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its tagged form."""
    if isinstance(value, float) and not math.isfinite(value):
        return {
            _FLOAT_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        }
    if isinstance(value, dict):
        return {str(k): encode_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_data(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return encode_data(value.tolist())
    return value


def decode_data(value: Any) -> Any:
    """The inverse of :func:`encode_data`."""
    if isinstance(value, dict):
        if len(value) == 1 and _FLOAT_TAG in value:
            tag = value[_FLOAT_TAG]
            if tag not in _NONFINITE:
                raise EventError(
                    f"unknown {_FLOAT_TAG} value {tag!r}; allowed: nan, inf, -inf"
                )
            return _NONFINITE[tag]
        return {k: decode_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_data(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """Strict JSON text of any data, non-finite floats tagged."""
    return json.dumps(encode_data(value), allow_nan=False)
