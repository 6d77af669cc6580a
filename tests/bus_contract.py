"""The bus contract's fixture and helpers: one ``bus`` fixture over every
backend, so that each contract test makes the same assertions on the
embedded bus and on a real Kafka broker.

``bus`` is parametrised as ``embedded`` (a fresh ``EmbeddedBus`` in the
test's own folder) and ``kafka`` (a ``KafkaBus`` on the broker at
``WAKEFIELD_TEST_KAFKA``; see :mod:`kafka_fixtures` for when it skips).
Topic and group names are unique per test.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kafka_fixtures import quick_options, unique_name, write_raw_kafka
from wakefield.bus.base import Bus, Consumer, Record, TopicPartition, TopicSpec
from wakefield.bus.kafka import KafkaBus

BACKENDS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
]

WAIT = 60.0
"""Seconds a test waits for events or a settled group before it fails."""


def _embedded_bus(path: Path) -> Bus:
    if importlib.util.find_spec("wakefield.bus.embedded") is None:
        pytest.skip("wakefield.bus.embedded does not exist yet")
    from wakefield.bus.embedded import EmbeddedBus

    return EmbeddedBus(path, session_timeout=6.0)


@pytest.fixture(params=BACKENDS)
def bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bus]:
    """A bus of each backend, closed after the test."""
    if request.param == "embedded":
        made = _embedded_bus(tmp_path / "bus")
    else:
        server = request.getfixturevalue("kafka_server")
        made = KafkaBus([server], options=quick_options())
    yield made
    made.close()


def new_topic(bus: Bus, prefix: str, partitions: int = 1) -> str:
    """A topic of its own for one test, created on ``bus``."""
    name = unique_name(prefix)
    bus.ensure_topics([TopicSpec(name, partitions=partitions)])
    return name


def write_raw(bus: Bus, topic: str, value: bytes) -> None:
    """Stores bytes that are no valid event, by the backend's own means."""
    if isinstance(bus, KafkaBus):
        write_raw_kafka(bus, topic, value)
        return
    publish_raw = getattr(bus, "publish_raw", None)
    if publish_raw is None:
        pytest.fail(f"{type(bus).__name__} has no publish_raw for tests of bad input")
    publish_raw(topic, value)


def drain(consumer: Consumer, count: int, timeout: float = WAIT) -> list[Record]:
    """Polls until ``count`` records arrived; fails the test after ``timeout``."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"got {len(records)} of {count} records within {timeout} s")
        records += consumer.poll(timeout=0.5)
    return records


def quiet(consumer: Consumer, seconds: float = 1.5) -> list[Record]:
    """Everything that arrives within ``seconds`` (expected: nothing)."""
    records: list[Record] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        records += consumer.poll(timeout=0.3)
    return records


def settle(
    consumers: Sequence[Consumer], topic: str, partitions: int, timeout: float = WAIT
) -> list[set[TopicPartition]]:
    """Polls every member until each owns some of ``topic``'s partitions and
    together they own each exactly once; returns their assignments.

    Nothing may be published before: a record arriving here fails the test.
    """
    every = {TopicPartition(topic, p) for p in range(partitions)}
    deadline = time.monotonic() + timeout
    while True:
        for consumer in consumers:
            early = consumer.poll(timeout=0.2)
            assert early == [], "records arrived while the group was settling"
        owned = [consumer.assignment() for consumer in consumers]
        union = set().union(*owned)
        disjoint = sum(len(o) for o in owned) == len(union)
        if union == every and disjoint and all(owned):
            return owned
        if time.monotonic() > deadline:
            pytest.fail(f"the group did not settle within {timeout} s: {owned}")
