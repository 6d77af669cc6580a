"""Events: the CloudEvents envelope, strict JSON data, deterministic ids."""

from __future__ import annotations

import json
import math

import pytest

from wakefield.errors import EventError
from wakefield.events import DataRef, Event, decode_data, encode_data


def test_round_trip_keeps_every_attribute() -> None:
    """An event survives to_json/from_json with all its attributes."""
    ref = DataRef(uri="datasets/a.zarr", hash="sha256:" + "0" * 64)
    event = Event(
        source="wakefield://w/s",
        type="org.example.x",
        subject="s1",
        data={"a": [1, 2.5, None]},
        dataref=ref,
        runid="r1",
        correlationid="c1",
        causationid="k1",
    )
    back = Event.from_json(event.to_json())
    assert back == event


def test_non_finite_floats_are_encoded_explicitly() -> None:
    """NaN and infinities never appear as bare tokens and come back as floats."""
    event = Event(
        source="s", type="t", data={"x": math.nan, "y": [math.inf, -math.inf, 1.0]}
    )
    raw = event.to_json().decode()
    assert "NaN" not in raw and "Infinity" not in raw
    body = json.loads(raw)
    assert body["data"]["x"] == {"$float": "nan"}
    back = Event.from_json(raw)
    assert math.isnan(back.data["x"]) and back.data["y"][:2] == [math.inf, -math.inf]


def test_bare_nan_is_refused() -> None:
    """A producer that writes a bare NaN token gets a clear error."""
    raw = '{"source": "s", "type": "t", "data": {"x": NaN}}'
    with pytest.raises(EventError, match="bare NaN"):
        Event.from_json(raw)


def test_unknown_float_tag_is_refused() -> None:
    """Only nan, inf and -inf are valid tagged floats."""
    with pytest.raises(EventError, match="allowed: nan, inf, -inf"):
        decode_data({"$float": "huge"})


def test_invalid_envelope_names_the_problem() -> None:
    """An event without a type is refused, naming the field."""
    with pytest.raises(EventError, match="type"):
        Event.from_json('{"source": "s"}')


def test_caused_events_have_deterministic_ids() -> None:
    """The same cause, source, type and index always give the same id."""
    cause = Event(source="s", type="t", runid="r")
    a = cause.caused(source="svc", type="out", index=0)
    b = cause.caused(source="svc", type="out", index=0)
    c = cause.caused(source="svc", type="out", index=1)
    assert a.id == b.id != c.id
    assert a.causationid == cause.id and a.correlationid == cause.id and a.runid == "r"


def test_numpy_values_become_json() -> None:
    """numpy arrays and scalars in data are encoded as plain lists and numbers."""
    np = pytest.importorskip("numpy")
    assert encode_data({"a": np.array([1.0, np.nan]), "b": np.float32(2)}) == {
        "a": [1.0, {"$float": "nan"}],
        "b": 2.0,
    }
