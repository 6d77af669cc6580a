"""The bus contract: the same assertions on every backend (embedded, Kafka)."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

pytest.register_assert_rewrite("bus_contract", "kafka_fixtures")

from bus_contract import drain, new_topic, quiet, settle, write_raw  # noqa: E402
from kafka_fixtures import unique_name  # noqa: E402
from wakefield.bus.base import Bus, TopicPartition, TopicSpec  # noqa: E402
from wakefield.errors import EventTooLargeError, TopicError  # noqa: E402
from wakefield.events import DataRef, Event  # noqa: E402

# The ``bus`` fixture (every backend) and the broker fixtures it uses.
pytest_plugins = ["bus_contract", "kafka_fixtures"]

SOURCE = "wakefield://contract/test"


def _event(n: int = 0, **fields: object) -> Event:
    return Event(source=SOURCE, type="org.wakefield.test", data={"n": n}, **fields)


def test_round_trip_keeps_every_attribute(bus: Bus) -> None:
    """A published event arrives with every attribute, its key and position."""
    topic = new_topic(bus, "roundtrip")
    sent = Event(
        source=SOURCE,
        type="org.wakefield.dataset.ready",
        subject="scan-3",
        data={"samples": 1000, "names": ["phase", "voltage"], "ok": True, "x": None},
        dataref=DataRef(uri="datasets/run-7/scan.zarr", hash="sha256:" + "ab" * 32),
        runid="run-7",
        correlationid="corr-1",
        causationid="cause-1",
    )
    producer = bus.producer()
    delivered = producer.publish(topic, sent, key="run-7")
    reader = bus.consumer([topic], group=None)

    (record,) = drain(reader, 1)

    assert record.event == sent
    assert record.error is None
    assert record.key == "run-7"
    assert (record.topic, record.partition, record.offset) == (
        delivered.topic,
        delivered.partition,
        delivered.offset,
    )
    assert record.raw
    reader.close()
    producer.close()


def test_one_keys_events_stay_in_order_over_partitions(bus: Bus) -> None:
    """Every event of one key lands on one partition, in publish order."""
    topic = new_topic(bus, "order", partitions=4)
    keys = [f"run-{k}" for k in range(8)]
    items = [(topic, _event(seq, runid=key), key) for seq in range(12) for key in keys]
    producer = bus.producer()
    producer.publish_many(items)
    reader = bus.consumer([topic], group=None)

    records = drain(reader, len(items))

    partitions: dict[str, set[int]] = defaultdict(set)
    sequence: dict[str, list[int]] = defaultdict(list)
    for record in records:
        assert record.event is not None and record.key is not None
        partitions[record.key].add(record.partition)
        sequence[record.key].append(record.event.data["n"])
    assert all(len(p) == 1 for p in partitions.values())
    assert all(seq == list(range(12)) for seq in sequence.values())
    assert len(set().union(*partitions.values())) > 1, "keys should spread"
    reader.close()
    producer.close()


def test_group_members_share_partitions_and_see_each_event_once(bus: Bus) -> None:
    """Two members split the partitions and together handle each event once."""
    topic = new_topic(bus, "share", partitions=4)
    group = unique_name("share")
    members = [bus.consumer([topic], group=group) for _ in range(2)]
    owned = settle(members, topic, 4)
    sent = [_event(n) for n in range(40)]
    producer = bus.producer()
    producer.publish_many([(topic, e, f"k{n}") for n, e in enumerate(sent)])

    seen: list[list[str]] = [[], []]
    for _ in range(200):
        for i, member in enumerate(members):
            for record in member.poll(timeout=0.2):
                assert record.tp in owned[i]
                assert record.event is not None
                seen[i].append(record.event.id)
                member.commit(record)
        if len(seen[0]) + len(seen[1]) >= len(sent):
            break

    assert sorted(seen[0] + seen[1]) == sorted(e.id for e in sent)
    assert seen[0] and seen[1]
    for member in members:
        member.close()
    producer.close()


def test_new_member_resumes_after_the_last_commit(bus: Bus) -> None:
    """After a commit, the group's next member starts right after it."""
    topic = new_topic(bus, "resume")
    group = unique_name("resume")
    producer = bus.producer()
    producer.publish_many([(topic, _event(n), None) for n in range(6)])

    first = bus.consumer([topic], group=group)
    records = drain(first, 3)
    first.commit(records[2])
    first.close()

    second = bus.consumer([topic], group=group)
    rest = drain(second, 3)
    assert [r.offset for r in rest] == [3, 4, 5]
    assert [r.event.data["n"] for r in rest if r.event] == [3, 4, 5]
    assert bus.committed(group, topic) == {0: 3}
    second.close()
    producer.close()


def test_uncommitted_record_is_redelivered_to_the_next_member(bus: Bus) -> None:
    """A record polled but not committed goes to the group's next member."""
    topic = new_topic(bus, "redeliver")
    group = unique_name("redeliver")
    producer = bus.producer()
    sent = _event(1)
    producer.publish(topic, sent)

    first = bus.consumer([topic], group=group)
    (polled,) = drain(first, 1)
    first.close()

    second = bus.consumer([topic], group=group)
    (again,) = drain(second, 1)
    assert again.offset == polled.offset
    assert again.event is not None and again.event.id == sent.id
    second.close()
    producer.close()


def test_pause_keeps_membership_and_holds_back_the_partition(bus: Bus) -> None:
    """A paused partition yields nothing while polling; membership stays."""
    topic = new_topic(bus, "pause", partitions=2)
    group = unique_name("pause")
    member = bus.consumer([topic], group=group)
    (owned,) = settle([member], topic, 2)
    held = TopicPartition(topic, 0)
    member.pause([held])

    producer = bus.producer()
    delivered = producer.publish_many(
        [(topic, _event(n), f"key-{n}") for n in range(12)]
    )
    expected_free = sum(1 for d in delivered if d.partition != held.partition)
    expected_held = len(delivered) - expected_free
    assert expected_free and expected_held, "keys should reach both partitions"

    free = drain(member, expected_free)
    free += quiet(member, 2.0)
    assert all(r.partition != held.partition for r in free)
    assert len(free) == expected_free
    assert member.assignment() == owned

    member.resume([held])
    later = drain(member, expected_held)
    assert all(r.partition == held.partition for r in later)
    member.commit(later[-1])
    assert bus.committed(group, topic)[held.partition] == later[-1].offset + 1
    member.close()
    producer.close()


def test_seek_reads_a_partition_again(bus: Bus) -> None:
    """After ``seek`` a consumer reads the partition again from that offset."""
    topic = new_topic(bus, "seek")
    producer = bus.producer()
    producer.publish_many([(topic, _event(n), None) for n in range(3)])
    reader = bus.consumer([topic], group=None)
    first = drain(reader, 3)

    reader.seek(TopicPartition(topic, 0), 1)
    again = drain(reader, 2)

    assert [r.offset for r in again] == [1, 2]
    assert [r.event for r in again] == [r.event for r in first[1:]]
    reader.close()
    producer.close()


def test_readers_without_group_start_at_earliest_or_latest(bus: Bus) -> None:
    """A reader from earliest sees all; one from latest only later events."""
    topic = new_topic(bus, "start")
    producer = bus.producer()
    producer.publish_many([(topic, _event(n), None) for n in range(2)])
    earliest = bus.consumer([topic], group=None, start="earliest")
    latest = bus.consumer([topic], group=None, start="latest")

    producer.publish(topic, _event(2))

    assert [r.event.data["n"] for r in drain(earliest, 3) if r.event] == [0, 1, 2]
    assert [r.event.data["n"] for r in drain(latest, 1) if r.event] == [2]
    assert quiet(latest) == []
    earliest.close()
    latest.close()
    producer.close()


def test_ensure_topics_without_create_names_every_missing_topic(bus: Bus) -> None:
    """``ensure_topics(create=False)`` raises naming each missing topic."""
    present = new_topic(bus, "present")
    absent = [unique_name("absent"), unique_name("absent")]
    specs = [TopicSpec(present), *(TopicSpec(name) for name in absent)]

    with pytest.raises(TopicError) as raised:
        bus.ensure_topics(specs, create=False)

    assert all(name in str(raised.value) for name in absent)
    assert not set(absent) & bus.topics()
    bus.ensure_topics([TopicSpec(present)], create=False)


def test_ensure_topics_creates_the_declared_partitions(bus: Bus) -> None:
    """Created topics have their declared partitions; a second call is a no-op."""
    name = unique_name("declared")
    bus.ensure_topics([TopicSpec(name, partitions=3)])
    bus.ensure_topics([TopicSpec(name, partitions=3)])

    assert name in bus.topics()
    assert bus.partitions(name) == 3
    assert bus.end_offsets(name) == {0: 0, 1: 0, 2: 0}


def test_lag_counts_events_not_yet_committed(bus: Bus) -> None:
    """Lag is what was published minus what the group committed."""
    topic = new_topic(bus, "lag")
    group = unique_name("lag")
    producer = bus.producer()
    producer.publish_many([(topic, _event(n), None) for n in range(5)])
    member = bus.consumer([topic], group=group)
    records = drain(member, 5)

    assert bus.lag(group, [topic]) == 5
    member.commit(records[1])

    assert bus.end_offsets(topic) == {0: 5}
    assert bus.committed(group, topic) == {0: 2}
    assert bus.lag(group, [topic]) == 3
    member.close()
    producer.close()


def test_non_finite_floats_round_trip(bus: Bus) -> None:
    """NaN and infinities in data arrive as NaN and infinities."""
    topic = new_topic(bus, "nonfinite")
    producer = bus.producer()
    sent = Event(
        source=SOURCE,
        type="org.wakefield.test",
        data={"nan": math.nan, "values": [1.5, math.inf, -math.inf]},
    )
    producer.publish(topic, sent)
    reader = bus.consumer([topic], group=None)

    (record,) = drain(reader, 1)

    assert record.event is not None
    data = record.event.data
    assert math.isnan(data["nan"])
    assert data["values"] == [1.5, math.inf, -math.inf]
    reader.close()
    producer.close()


def test_undecodable_record_arrives_with_its_error(bus: Bus) -> None:
    """Bytes that are no event arrive as event=None with a reason and the raw
    bytes, and the consumer goes on to the next event."""
    topic = new_topic(bus, "garbage")
    garbage = b"\xff\xfe this is not an event {"
    write_raw(bus, topic, garbage)
    producer = bus.producer()
    good = _event(7)
    producer.publish(topic, good)
    reader = bus.consumer([topic], group=None)

    bad, fine = drain(reader, 2)

    assert bad.event is None
    assert bad.error
    assert bad.raw == garbage
    assert fine.event == good and fine.error is None
    reader.close()
    producer.close()


def test_publish_to_a_missing_topic_raises_topic_error(bus: Bus) -> None:
    """Publishing to a topic that does not exist raises TopicError naming it."""
    missing = unique_name("missing")
    producer = bus.producer()

    with pytest.raises(TopicError, match=missing):
        producer.publish(missing, _event())

    with pytest.raises(TopicError, match=missing):
        bus.consumer([missing], group=None)
    producer.close()


def test_oversized_event_raises_and_stores_nothing(bus: Bus) -> None:
    """An event over the size limit raises EventTooLargeError with its size;
    nothing is stored and the producer keeps working."""
    topic = new_topic(bus, "oversized")
    producer = bus.producer()
    huge = Event(source=SOURCE, type="org.wakefield.test", data={"x": "x" * 2_000_000})

    with pytest.raises(EventTooLargeError) as raised:
        producer.publish(topic, huge)

    message = str(raised.value)
    assert "dataref" in message and "bytes" in message
    assert bus.end_offsets(topic) == {0: 0}
    producer.publish(topic, _event(1))
    assert bus.end_offsets(topic) == {0: 1}
    producer.close()


def test_oversized_event_in_publish_many_stores_none_of_the_call(bus: Bus) -> None:
    """An oversized event among others in ``publish_many`` raises before any
    event of that call is stored."""
    topic = new_topic(bus, "oversizedmany")
    producer = bus.producer()
    huge = Event(source=SOURCE, type="org.wakefield.test", data={"x": "x" * 2_000_000})
    batch = [(topic, _event(0), None), (topic, huge, None), (topic, _event(2), None)]

    with pytest.raises(EventTooLargeError):
        producer.publish_many(batch)

    assert bus.end_offsets(topic) == {0: 0}
    producer.close()
