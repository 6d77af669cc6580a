"""The strict config base: durations, sizes, unknown fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wakefield.config import Duration, StrictModel, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (12, 12.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("0.5", 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations are read from numbers and from numbers with units."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-1s", True, "5 parsecs"])
def test_bad_durations(bad: object) -> None:
    """Anything else is refused with a message that shows the format."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1.5G", 1_500_000_000),
        ("10kb", 10_000),
    ],
)
def test_sizes(text: object, size: int) -> None:
    """Memory sizes accept binary and decimal units."""
    assert parse_size(text) == size


def test_unknown_fields_are_errors_and_dump_load_round_trips() -> None:
    """StrictModel forbids unknown keys, and load(dump(x)) == x."""

    class Cfg(StrictModel):
        wait: Duration = 1.0
        name: str = "x"

    with pytest.raises(ValidationError, match="Extra inputs"):
        Cfg.load({"wiat": 3})
    cfg = Cfg.load({"wait": "2m"})
    assert cfg.wait == 120.0
    assert Cfg.load(cfg.dump()) == cfg
