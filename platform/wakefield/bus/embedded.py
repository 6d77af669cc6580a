"""The embedded bus: Kafka's semantics in one SQLite file, no server needed.

Every process on the machine that opens the same folder sees the same topics,
so ``wakefield subscribe`` in a second terminal follows a running workflow,
and a run that is restarted resumes from the offsets its groups committed.
SQLite's write-ahead log keeps every published event across a crash of any
process (``synchronous=NORMAL``: durable against process crashes; a power
cut may lose the last few transactions).

Tables::

    topics(name, partitions)                    one row per topic
    events(topic, partition, offset, ...)       the log, append-only
    commits(grp, topic, partition, offset)      committed offsets per group
    members(grp, member, topics, heartbeat)     live members of each group
    assignments(grp, topic, partition, member)  who owns which partition

Group membership works as in Kafka: a member that stops sending heartbeats
for ``session_timeout`` seconds is dropped, and its partitions move to the
others; a member whose partition has moved cannot commit it any more.
Heartbeats run on their own thread, so a member that is busy with long work
keeps its partitions as long as its process lives.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import BusError, CommitError, EventError, EventTooLargeError, TopicError
from ..events import Event
from .base import (
    Bus,
    Consumer,
    Delivered,
    Producer,
    Record,
    StartAt,
    TopicPartition,
    TopicSpec,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 1_048_588  # Kafka's default message.max.bytes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    topics TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    joined REAL NOT NULL,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assignments (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""


class _Db:
    """One SQLite connection per thread onto the bus file."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._local = threading.local()

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.file, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once so that readers never deadlock."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class EmbeddedBus(Bus):
    """A durable, cross-process bus in the folder ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 1.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.url = f"embedded://{self.path}"
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self.max_event_bytes = max_event_bytes
        self._db = _Db(self.path / "bus.sqlite3")
        self._db.conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"EmbeddedBus({str(self.path)!r})"

    @classmethod
    def from_url(cls, url: str) -> EmbeddedBus:
        """``embedded:///abs/path`` or ``embedded://relative/path``."""
        path = url.removeprefix("embedded://")
        if not path:
            raise BusError(
                f"embedded bus URL {url!r} names no folder; e.g. embedded://.wakefield/bus"
            )
        return cls(path)

    # Topics

    def ensure_topics(
        self, topics: Sequence[TopicSpec], *, create: bool = True
    ) -> None:
        existing = self._partition_counts()
        missing = [t for t in topics if t.name not in existing]
        if missing and not create:
            names = ", ".join(sorted(t.name for t in missing))
            raise TopicError(
                f"topics do not exist on {self.url}: {names}; create them first "
                "or let wakefield create them"
            )
        for spec in topics:
            if spec.partitions < 1:
                raise TopicError(f"topic {spec.name!r} needs at least one partition")
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                log.warning(
                    "topic %s has %s partitions, the workflow declares %s; keeping %s",
                    spec.name,
                    have,
                    spec.partitions,
                    have,
                )
        if missing:
            with self._db.write() as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO topics VALUES (?, ?, ?)",
                    [(t.name, t.partitions, time.time()) for t in missing],
                )
            log.info("created topics %s on %s", [t.name for t in missing], self.url)

    def _partition_counts(self) -> dict[str, int]:
        rows = self._db.conn.execute("SELECT name, partitions FROM topics").fetchall()
        return {name: n for name, n in rows}

    def topics(self) -> set[str]:
        return set(self._partition_counts())

    def partitions(self, topic: str) -> int:
        row = self._db.conn.execute(
            "SELECT partitions FROM topics WHERE name = ?", (topic,)
        ).fetchone()
        if row is None:
            raise TopicError(f"topic {topic!r} does not exist on {self.url}")
        return int(row[0])

    # Clients

    def producer(self) -> EmbeddedProducer:
        return EmbeddedProducer(self)

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str | None,
        start: StartAt = "earliest",
        client_id: str | None = None,
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(
            self, list(topics), group=group, start=start, client_id=client_id
        )

    # Offsets

    def end_offsets(self, topic: str) -> dict[int, int]:
        count = self.partitions(topic)
        rows = self._db.conn.execute(
            "SELECT partition, MAX(offset) FROM events WHERE topic = ? GROUP BY partition",
            (topic,),
        ).fetchall()
        ends = {p: 0 for p in range(count)}
        ends.update({p: top + 1 for p, top in rows})
        return ends

    def committed(self, group: str, topic: str) -> dict[int, int]:
        rows = self._db.conn.execute(
            "SELECT partition, offset FROM commits WHERE grp = ? AND topic = ?",
            (group, topic),
        ).fetchall()
        return {p: o for p, o in rows}

    def publish_raw(
        self, topic: str, value: bytes, *, key: str | None = None
    ) -> Delivered:
        """Store bytes that need not be a valid event (for tests of bad input)."""
        return self._append(topic, value, key, partition=None)

    def close(self) -> None:
        self._db.close()

    # Internals shared by producers and consumers

    def _append(
        self, topic: str, value: bytes, key: str | None, partition: int | None
    ) -> Delivered:
        return self._append_all([(topic, value, key, partition)])[0]

    def _append_all(
        self, items: list[tuple[str, bytes, str | None, int | None]]
    ) -> list[Delivered]:
        """Store every item in one transaction, or none of them."""
        for topic, value, _, _ in items:
            if len(value) > self.max_event_bytes:
                raise EventTooLargeError(
                    f"event of {len(value)} bytes is over the bus's limit of "
                    f"{self.max_event_bytes} bytes on topic {topic!r}; write bulk data "
                    "to the datastore and send its reference (dataref) instead"
                )
        delivered = []
        with self._db.write() as conn:
            for topic, value, key, partition in items:
                row = conn.execute(
                    "SELECT partitions FROM topics WHERE name = ?", (topic,)
                ).fetchone()
                if row is None:
                    raise TopicError(
                        f"topic {topic!r} does not exist on {self.url}; declare it in "
                        "the workflow's topics or publish it from a service"
                    )
                if partition is None:
                    partition = _partition_for(key, int(row[0]))
                top = conn.execute(
                    "SELECT MAX(offset) FROM events WHERE topic = ? AND partition = ?",
                    (topic, partition),
                ).fetchone()[0]
                offset = 0 if top is None else top + 1
                conn.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, partition, offset, key, value, time.time()),
                )
                delivered.append(Delivered(topic, partition, offset))
        return delivered


_round_robin = itertools.count()


def _partition_for(key: str | None, partitions: int) -> int:
    """The same key always lands on the same partition."""
    if key is None:
        return next(_round_robin) % partitions
    return zlib.crc32(key.encode()) % partitions


class EmbeddedProducer(Producer):
    def __init__(self, bus: EmbeddedBus) -> None:
        self.bus = bus

    def publish_many(
        self, items: Iterable[tuple[str, Event, str | None]]
    ) -> list[Delivered]:
        """All events stored in one transaction; an oversized one stores none."""
        return self.bus._append_all(
            [(topic, event.to_json(), key, None) for topic, event, key in items]
        )

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> Delivered:
        delivered = self.bus._append(topic, event.to_json(), key, partition=None)
        log.debug(
            "published %s to %s[%s]@%s",
            event.id,
            topic,
            delivered.partition,
            delivered.offset,
        )
        return delivered


class EmbeddedConsumer(Consumer):
    """A reader of topics, alone or as a member of a consumer group."""

    def __init__(
        self,
        bus: EmbeddedBus,
        topics: list[str],
        *,
        group: str | None,
        start: StartAt,
        client_id: str | None,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.start = start
        # A consumer with a client id is a static member (as Kafka's
        # group.instance.id): a replica restarted after a crash takes its
        # partitions back at once instead of waiting for its session to expire.
        self.member = (
            client_id if client_id and group else f"consumer-{uuid.uuid4().hex[:12]}"
        )
        self._db = _Db(bus._db.file)
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._owned: set[TopicPartition] = set()
        self._closed = threading.Event()
        self._cursor = 0
        missing = [t for t in topics if t not in bus.topics()]
        if missing:
            raise TopicError(
                f"cannot subscribe to missing topics on {bus.url}: {', '.join(missing)}"
            )
        if group is None:
            self._owned = {
                TopicPartition(t, p) for t in topics for p in range(bus.partitions(t))
            }
            for tp in self._owned:  # "latest" means from now, not from the first poll
                self._position(tp)
            self._heartbeat: threading.Thread | None = None
        else:
            self._join()
            self._heartbeat = threading.Thread(
                target=self._beat, name=f"heartbeat-{self.member}", daemon=True
            )
            self._heartbeat.start()

    # Group membership

    def _join(self) -> None:
        now = time.time()
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?)",
                (self.group, self.member, json.dumps(self.topics), now, now),
            )
            _rebalance(conn, self.group, self.bus.session_timeout)
        log.info(
            "consumer %s joined group %s for %s", self.member, self.group, self.topics
        )

    def _beat(self) -> None:
        while not self._closed.wait(self.bus.heartbeat_interval):
            try:
                with self._db.write() as conn:
                    alive = conn.execute(
                        "UPDATE members SET heartbeat = ? WHERE grp = ? AND member = ?",
                        (time.time(), self.group, self.member),
                    ).rowcount
                    if not alive:  # expired while this process was stalled: join again
                        now = time.time()
                        conn.execute(
                            "INSERT INTO members VALUES (?, ?, ?, ?, ?)",
                            (
                                self.group,
                                self.member,
                                json.dumps(self.topics),
                                now,
                                now,
                            ),
                        )
                        log.warning(
                            "consumer %s had expired from %s; rejoined",
                            self.member,
                            self.group,
                        )
                    _rebalance(conn, self.group, self.bus.session_timeout)
            except sqlite3.Error:
                log.exception("heartbeat of %s failed", self.member)
        self._db.close()

    def _refresh_assignment(self) -> None:
        if self.group is None:
            return
        rows = self._db.conn.execute(
            "SELECT topic, partition FROM assignments WHERE grp = ? AND member = ?",
            (self.group, self.member),
        ).fetchall()
        owned = {TopicPartition(t, p) for t, p in rows}
        for lost in self._owned - owned:
            self._positions.pop(lost, None)
            self._paused.discard(lost)
        if owned != self._owned:
            log.info(
                "consumer %s of %s now owns %s", self.member, self.group, sorted(owned)
            )
        self._owned = owned

    def _position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            committed = None
            if self.group is not None:
                committed = self.bus.committed(self.group, tp.topic).get(tp.partition)
            if committed is not None:
                self._positions[tp] = committed
            elif self.start == "latest":
                self._positions[tp] = self.bus.end_offsets(tp.topic)[tp.partition]
            else:
                self._positions[tp] = 0
        return self._positions[tp]

    # Consumer interface

    def assignment(self) -> set[TopicPartition]:
        self._refresh_assignment()
        return set(self._owned)

    def poll(self, timeout: float = 1.0, max_records: int = 100) -> list[Record]:
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            self._refresh_assignment()
            records = self._fetch(max_records)
            if records or time.monotonic() >= deadline or self._closed.is_set():
                return records
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.01)

    def _fetch(self, max_records: int) -> list[Record]:
        active = sorted(self._owned - self._paused)
        if not active:
            return []
        # Start at a different partition each time, so none is starved.
        self._cursor = (self._cursor + 1) % len(active)
        active = active[self._cursor :] + active[: self._cursor]
        records: list[Record] = []
        for tp in active:
            want = max_records - len(records)
            if want <= 0:
                break
            rows = self._db.conn.execute(
                "SELECT offset, key, value, ts FROM events "
                "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (tp.topic, tp.partition, self._position(tp), want),
            ).fetchall()
            for offset, key, value, ts in rows:
                records.append(_record(tp, offset, key, bytes(value), ts))
                self._positions[tp] = offset + 1
        return records

    def commit(self, record: Record) -> None:
        if self.group is None:
            return
        with self._db.write() as conn:
            owner = conn.execute(
                "SELECT member FROM assignments WHERE grp = ? AND topic = ? AND partition = ?",
                (self.group, record.topic, record.partition),
            ).fetchone()
            if owner is None or owner[0] != self.member:
                raise CommitError(
                    f"cannot commit {record.topic}[{record.partition}]@{record.offset} for "
                    f"group {self.group!r}: the partition has moved to another member"
                )
            conn.execute(
                "INSERT INTO commits VALUES (?, ?, ?, ?) ON CONFLICT (grp, topic, partition) "
                "DO UPDATE SET offset = excluded.offset",
                (self.group, record.topic, record.partition, record.offset + 1),
            )

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._positions[partition] = offset

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self.group is not None:
            if self._heartbeat is not None:
                self._heartbeat.join(timeout=5)
            with self._db.write() as conn:
                conn.execute(
                    "DELETE FROM members WHERE grp = ? AND member = ?",
                    (self.group, self.member),
                )
                _rebalance(conn, self.group, self.bus.session_timeout)
            log.info("consumer %s left group %s", self.member, self.group)
        self._db.close()


def _record(
    tp: TopicPartition, offset: int, key: str | None, value: bytes, ts: float
) -> Record:
    try:
        event: Event | None = Event.from_json(value)
        error = None
    except EventError as exc:
        event, error = None, str(exc)
    return Record(tp.topic, tp.partition, offset, key, event, value, ts, error)


def _rebalance(
    conn: sqlite3.Connection, group: str | None, session_timeout: float
) -> None:
    """Drop expired members, then spread partitions over the live ones.

    Partitions stay with their owner while it lives (sticky), so a member
    joining or leaving moves only the partitions it must.
    """
    conn.execute(
        "DELETE FROM members WHERE grp = ? AND heartbeat < ?",
        (group, time.time() - session_timeout),
    )
    members = conn.execute(
        "SELECT member, topics FROM members WHERE grp = ? ORDER BY joined, member",
        (group,),
    ).fetchall()
    subscribed = {m: set(json.loads(t)) for m, t in members}
    counts = dict(conn.execute("SELECT name, partitions FROM topics").fetchall())
    current = {
        (t, p): m
        for t, p, m in conn.execute(
            "SELECT topic, partition, member FROM assignments WHERE grp = ?", (group,)
        ).fetchall()
    }
    wanted: dict[tuple[str, int], str] = {}
    for topic in sorted({t for ts in subscribed.values() for t in ts}):
        eligible = [m for m, _ in members if topic in subscribed[m]]
        parts = list(range(counts.get(topic, 0)))
        share = -(
            -len(parts) // len(eligible)
        )  # ceiling: most partitions one member keeps
        load = dict.fromkeys(eligible, 0)
        free = []
        for p in parts:
            owner = current.get((topic, p))
            if owner is not None and owner in load and load[owner] < share:
                wanted[(topic, p)] = owner
                load[owner] += 1
            else:
                free.append(p)
        for p in free:
            owner = min(eligible, key=lambda m: (load[m], eligible.index(m)))
            wanted[(topic, p)] = owner
            load[owner] += 1
    if wanted != current:
        conn.execute("DELETE FROM assignments WHERE grp = ?", (group,))
        conn.executemany(
            "INSERT INTO assignments VALUES (?, ?, ?, ?)",
            [(group, t, p, m) for (t, p), m in wanted.items()],
        )
