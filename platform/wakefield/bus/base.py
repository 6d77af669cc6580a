"""The bus interface every backend implements: the embedded bus for one
machine, Apache Kafka on a cluster.

Semantics, the same on every backend (the contract tests check them):

- A topic has a fixed number of partitions.  An event sent with a key goes to
  the partition the key hashes to, so one key's events stay in order.
- Consumers in one group share a topic's partitions; each partition is read
  by one member at a time.  When members join or leave, partitions move
  (a rebalance).
- Delivery is at least once.  A consumer commits a record's offset after it
  has handled the record; after a crash or a rebalance, the next owner of
  the partition starts at the last committed offset.
- A consumer that pauses a partition keeps its membership while it polls
  (no record of that partition is returned), so long work never gets a
  member evicted.
- ``publish`` returns only when the event is stored; a failure raises.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..events import Event

StartAt = Literal["earliest", "latest"]


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create (or to find) before a run starts."""

    name: str
    partitions: int = 1
    replication: int = 1
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivered:
    """Where a published event was stored."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Record:
    """One event as a consumer receives it.

    ``event`` is None when the payload could not be decoded; ``error`` then
    says why and ``raw`` holds the bytes, so the runtime can dead-letter it.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    event: Event | None
    raw: bytes
    timestamp: float = field(default_factory=time.time)
    error: str | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class Producer(ABC):
    """Publishes events; every send is confirmed or raises."""

    @abstractmethod
    def publish(self, topic: str, event: Event, *, key: str | None = None) -> Delivered:
        """Store ``event`` on ``topic``; raises a :class:`BusError` on failure."""

    def publish_many(
        self, items: Iterable[tuple[str, Event, str | None]]
    ) -> list[Delivered]:
        """Publish several events; returns once all are stored."""
        return [self.publish(topic, event, key=key) for topic, event, key in items]

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release the producer's resources."""


class Consumer(ABC):
    """Reads events from topics, alone or as a member of a group."""

    group: str | None

    @abstractmethod
    def poll(self, timeout: float = 1.0, max_records: int = 100) -> list[Record]:
        """Records from assigned, unpaused partitions; [] after ``timeout`` seconds."""

    @abstractmethod
    def commit(self, record: Record) -> None:
        """Mark ``record`` handled: its partition resumes after it.

        Raises :class:`CommitError` when the partition has moved to another
        member since the record was polled.
        """

    @abstractmethod
    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns now."""

    @abstractmethod
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning records of these partitions, keeping membership."""

    @abstractmethod
    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Return records of these partitions again."""

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (to handle a record again)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; owned partitions move to other members."""


class Bus(ABC):
    """A connection to one bus: topics, producers and consumers."""

    url: str
    """Where this bus is, as ``embedded:///path`` or ``kafka://host:port``."""

    @abstractmethod
    def ensure_topics(
        self, topics: Sequence[TopicSpec], *, create: bool = True
    ) -> None:
        """Create missing topics, or with ``create=False`` raise
        :class:`TopicError` naming every one that is missing."""

    @abstractmethod
    def topics(self) -> set[str]:
        """The names of the topics that exist."""

    @abstractmethod
    def partitions(self, topic: str) -> int:
        """The number of partitions of ``topic``."""

    @abstractmethod
    def producer(self) -> Producer:
        """A new producer."""

    @abstractmethod
    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str | None,
        start: StartAt = "earliest",
        client_id: str | None = None,
    ) -> Consumer:
        """A consumer of ``topics``.

        With a ``group`` it shares partitions with the group's other members
        and resumes from the group's committed offsets (``start`` applies
        where nothing is committed yet).  Without one it reads every
        partition from ``start`` and commits nothing.
        """

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """The offset the next event of each partition will get."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets per partition (missing: none yet)."""

    def lag(self, group: str, topics: Sequence[str]) -> int:
        """Events published but not yet committed by ``group``."""
        total = 0
        for topic in topics:
            done = self.committed(group, topic)
            for partition, end in self.end_offsets(topic).items():
                total += end - done.get(partition, 0)
        return total

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections."""
