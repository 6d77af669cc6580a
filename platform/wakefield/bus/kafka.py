"""Apache Kafka as wakefield's bus, on kafka-python 3.0.

Connecting
----------
``KafkaBus.from_url("kafka://h1:9092,h2:9092")`` connects to the cluster.
A broker that does not answer yet is retried with bounded exponential
backoff until ``connect_timeout`` (60 s unless told otherwise) has passed;
each retry is reported to the optional ``on_retry(attempt, delay, error)``
callback, so the runtime can show it on the status topic.  After the limit
:class:`BusUnavailableError` names the address and the last error.

TLS and SASL settings never appear in a workflow.  They come from the
environment, or from a file of ``NAME=value`` lines named by
``WAKEFIELD_KAFKA_CONFIG_FILE`` (the environment wins where both set one)::

    WAKEFIELD_KAFKA_SECURITY_PROTOCOL   PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    WAKEFIELD_KAFKA_SASL_MECHANISM      PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    WAKEFIELD_KAFKA_SASL_USERNAME
    WAKEFIELD_KAFKA_SASL_PASSWORD
    WAKEFIELD_KAFKA_SSL_CAFILE          PEM file of the authorities to trust
    WAKEFIELD_KAFKA_SSL_CERTFILE        PEM file of this client's certificate
    WAKEFIELD_KAFKA_SSL_KEYFILE         PEM file of its private key

The password is held as a secret: it never appears in a log line or a repr.

Events on the wire
------------------
The CloudEvents Kafka protocol binding in binary content mode: every
attribute is a header (``ce_id``, ``ce_source``, ``ce_type``,
``ce_specversion``, ``ce_time``, ``ce_subject`` and wakefield's extensions
``ce_dataref`` (the DataRef as JSON), ``ce_runid``, ``ce_correlationid``,
``ce_causationid``), ``content-type`` says ``application/json``, and the
record's value is the data as strict JSON (non-finite floats tagged, see
:mod:`wakefield.events`).  The record key is the partitioner's input
(Kafka's murmur2 partitioner), so the events of one key stay in order.
A record that cannot be decoded arrives as a :class:`Record` whose
``event`` is None, with the reason in ``error`` and the value in ``raw``;
the consumer never fails on it.

Delivery
--------
The producer is idempotent (``enable_idempotence``, acks from all in-sync
replicas).  :meth:`KafkaProducer.publish` returns once the broker has
stored the event; :meth:`KafkaProducer.publish_many` sends every event,
then waits for each.  Sizes are checked before anything is sent: an event
over the topic's limit raises :class:`EventTooLargeError` and no event of
that call is sent.  Consumers commit by hand; ``commit(record)`` stores
``offset + 1`` for the record's partition and raises :class:`CommitError`
when the partition has moved to another member.

Long work: pause, keep polling, commit, resume
----------------------------------------------
A member that does not call ``poll`` for ``max_poll_interval`` (300 s
unless told otherwise) is evicted from its group, its partitions move, and
its events are handled again elsewhere.  Long work therefore never stops
the poll loop::

    for record in consumer.poll(timeout=1.0):
        owned = consumer.assignment()
        consumer.pause(owned)
        work = pool.submit(handle, record)       # off the poll loop
        while not work.done():
            # Keeps the member alive; nothing comes from paused partitions.
            # Anything that does arrive (a partition newly assigned in a
            # rebalance) is queued and handled after this record.
            queue.extend(consumer.poll(timeout=0.5))
        try:
            consumer.commit(record)
        except CommitError:
            pass      # the partition moved; its new owner handles it again
        consumer.resume(owned)

Calling ``poll`` at least every ``max_poll_interval / 2`` is enough; the
consumer logs a warning when the gap between two polls gets longer.
Handlers are idempotent by event id, so a redelivery after a rebalance or a
crash is harmless.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import kafka.errors as kerrors
from kafka import ConsumerRebalanceListener, OffsetAndMetadata, OffsetSpec
from kafka import KafkaAdminClient as _KafkaAdminClient
from kafka import KafkaConsumer as _KafkaConsumer
from kafka import KafkaProducer as _KafkaProducer
from kafka import TopicPartition as _KafkaTopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.net.compat import KafkaNetClient
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import MemberState
from pydantic import Field, FilePath, SecretStr, ValidationError, model_validator

from ..config import ByteSize, Duration, StrictModel
from ..errors import (
    BusError,
    BusUnavailableError,
    CommitError,
    EventError,
    EventTooLargeError,
    SpecError,
    TopicError,
)
from ..events import Event, decode_data, encode_data
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

__all__ = [
    "CONFIG_FILE_ENV",
    "KafkaBus",
    "KafkaConsumer",
    "KafkaOptions",
    "KafkaProducer",
    "KafkaSecurity",
    "RetryCallback",
    "decode_record",
    "encode_event",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

RetryCallback = Callable[[int, float, Exception], None]
"""Called before each retry of an unreachable broker: attempt, delay (s), error."""

CONFIG_FILE_ENV = "WAKEFIELD_KAFKA_CONFIG_FILE"
DEFAULT_PORT = 9092

_FIRST_DELAY = 0.5  # s, the first pause between two connection attempts
_MAX_DELAY = 8.0  # s, the longest pause between two connection attempts
_RECONNECT_BACKOFF_MAX_MS = 2000  # reconnect soon after a broker restart

# Errors that mean "no broker answered": worth another attempt.
_UNREACHABLE = (
    kerrors.KafkaTimeoutError,
    kerrors.KafkaConnectionError,
    kerrors.NodeNotReadyError,
)
# Errors that mean "this member is no longer the partition's owner".
_REBALANCED = (
    kerrors.CommitFailedError,
    kerrors.IllegalGenerationError,
    kerrors.UnknownMemberIdError,
    kerrors.RebalanceInProgressError,
    kerrors.FencedInstanceIdError,
)
_TOO_LARGE = (kerrors.MessageSizeTooLargeError, kerrors.RecordListTooLargeError)
_COORDINATOR_NOT_READY = (
    kerrors.CoordinatorNotAvailableError,
    kerrors.CoordinatorLoadInProgressError,
    kerrors.NotCoordinatorError,
)

# The CloudEvents attributes carried as ce_ headers, in the order written.
_CE_ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataref",
    "runid",
    "correlationid",
    "causationid",
)
_JSON = "application/json"
_STRUCTURED = "application/cloudevents+json"


# --- security settings ------------------------------------------------------


class _Redacted(str):
    """A secret handed to kafka-python: its value as usual, hidden in reprs.

    kafka-python's admin client logs its whole configuration at DEBUG level;
    this keeps the password out of that line.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


class KafkaSecurity(StrictModel):
    """How clients authenticate to the brokers and protect the connection.

    Read from the environment (:meth:`from_env`), never from a workflow.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        Field("PLAINTEXT", alias="WAKEFIELD_KAFKA_SECURITY_PROTOCOL")
    )
    """Transport: plain TCP or TLS, with or without SASL authentication."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, alias="WAKEFIELD_KAFKA_SASL_MECHANISM"
    )
    """The SASL mechanism; needed with SASL_PLAINTEXT and SASL_SSL."""
    sasl_username: str | None = Field(None, alias="WAKEFIELD_KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = Field(None, alias="WAKEFIELD_KAFKA_SASL_PASSWORD")
    ssl_cafile: FilePath | None = Field(None, alias="WAKEFIELD_KAFKA_SSL_CAFILE")
    """PEM file of the certificate authorities to trust."""
    ssl_certfile: FilePath | None = Field(None, alias="WAKEFIELD_KAFKA_SSL_CERTFILE")
    """PEM file of this client's certificate (mutual TLS)."""
    ssl_keyfile: FilePath | None = Field(None, alias="WAKEFIELD_KAFKA_SSL_KEYFILE")
    """PEM file of this client's private key (mutual TLS)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        protocol = self.security_protocol
        sasl = {
            "WAKEFIELD_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "WAKEFIELD_KAFKA_SASL_USERNAME": self.sasl_username,
            "WAKEFIELD_KAFKA_SASL_PASSWORD": self.sasl_password,
        }
        if protocol.startswith("SASL_"):
            unset = [name for name, value in sasl.items() if not value]
            if unset:
                raise ValueError(
                    f"WAKEFIELD_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                    f"{', '.join(unset)}; set them, or choose PLAINTEXT or SSL"
                )
        elif any(sasl.values()):
            given = [name for name, value in sasl.items() if value]
            raise ValueError(
                f"{', '.join(given)} set, but WAKEFIELD_KAFKA_SECURITY_PROTOCOL is "
                f"{protocol}; use SASL_SSL or SASL_PLAINTEXT, or unset them"
            )

        files = {
            "WAKEFIELD_KAFKA_SSL_CAFILE": self.ssl_cafile,
            "WAKEFIELD_KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "WAKEFIELD_KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        if not protocol.endswith("SSL") and any(files.values()):
            given = [name for name, value in files.items() if value]
            raise ValueError(
                f"{', '.join(given)} set, but WAKEFIELD_KAFKA_SECURITY_PROTOCOL is "
                f"{protocol}, which does not use TLS; use SSL or SASL_SSL, "
                "or unset them"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError(
                "WAKEFIELD_KAFKA_SSL_KEYFILE set without WAKEFIELD_KAFKA_SSL_CERTFILE; "
                "a private key is used with its certificate"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Settings from ``WAKEFIELD_KAFKA_*`` variables and the file named by
        ``WAKEFIELD_KAFKA_CONFIG_FILE``; raises :class:`SpecError` naming
        each variable that is wrong."""
        env = os.environ if environ is None else environ
        names = _setting_names()
        values: dict[str, str] = {}
        source = "the environment"

        path = env.get(CONFIG_FILE_ENV)
        if path:
            values.update(_read_settings_file(Path(path), names))
            source = f"{path} and the environment"
        values.update({k: v for k, v in env.items() if k in names and v != ""})

        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            # Not chained: pydantic's error carries the input, password included.
            raise SpecError(
                f"Kafka security settings from {source} are not valid:\n  "
                + "\n  ".join(_describe_errors(exc))
            ) from None

    def client_options(self) -> dict[str, Any]:
        """The matching kafka-python keyword arguments."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism and self.sasl_password is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            secret = self.sasl_password.get_secret_value()
            options["sasl_plain_password"] = _Redacted(secret)
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                options[name] = str(value)
        return options


def _setting_names() -> set[str]:
    return {
        field.alias
        for field in KafkaSecurity.model_fields.values()
        if field.alias is not None
    }


def _read_settings_file(path: Path, names: set[str]) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, optional ``export`` and quotes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(
            f"{CONFIG_FILE_ENV} names {str(path)!r}, which cannot be read "
            f"({exc.strerror}); point it at a file of NAME=value lines"
        ) from exc

    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in names:
            raise SpecError(
                f"{path}:{number}: expected NAME=value with NAME one of "
                f"{', '.join(sorted(names))}; got {name!r}"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def _describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        text = f"{where}: {error['msg'].removeprefix('Value error, ')}"
        if error["loc"] and "PASSWORD" not in where and error["type"] != "value_error":
            text += f" (got {error['input']!r})"
        lines.append(text)
    return lines


# --- client options ---------------------------------------------------------


class KafkaOptions(StrictModel):
    """How wakefield's Kafka clients behave; times in seconds, sizes in bytes."""

    client_id: str = Field("wakefield", min_length=1)
    """Client id shown in the broker's logs and metrics."""
    connect_timeout: Duration = 60.0
    """Total time to retry a broker that does not answer yet, in s."""
    attempt_timeout: Duration = 5.0
    """Time one connection attempt may take, in s."""
    request_timeout: Duration = 15.0
    """Time a metadata, offset or commit request may take, in s."""
    delivery_timeout: Duration = 120.0
    """Longest wait for the broker to confirm a published event, in s."""
    session_timeout: Duration = 45.0
    """A group member without heartbeats for this long is dropped, in s
    (the broker allows 6 s to 30 min by default)."""
    max_poll_interval: Duration = 300.0
    """A group member that does not poll for this long is evicted, in s."""
    max_event_bytes: ByteSize = 1_048_576
    """Largest event a producer sends; the topic's ``max.message.bytes`` on
    the broker applies too, whichever is smaller."""

    @model_validator(mode="after")
    def _positive(self) -> Self:
        for name in ("attempt_timeout", "request_timeout", "delivery_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0 s")
        if self.session_timeout < 1:
            raise ValueError("session_timeout must be at least 1 s")
        if self.max_poll_interval < 1:
            raise ValueError("max_poll_interval must be at least 1 s")
        if self.max_event_bytes < 1024:
            raise ValueError("max_event_bytes must be at least 1 KiB")
        return self


# --- events on the wire -----------------------------------------------------

Headers = list[tuple[str, bytes]]


def encode_event(event: Event) -> tuple[bytes, Headers]:
    """The record value and headers of ``event`` (CloudEvents binary mode)."""
    attributes = event.model_dump(
        mode="json", exclude_none=True, exclude={"data", "datacontenttype"}
    )
    headers: Headers = []
    for name in _CE_ATTRIBUTES:
        if name not in attributes:
            continue
        value = attributes[name]
        text = json.dumps(value, separators=(",", ":")) if name == "dataref" else value
        headers.append((f"ce_{name}", str(text).encode()))
    headers.append(("content-type", event.datacontenttype.encode()))

    try:
        data = json.dumps(
            encode_data(event.data), allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise EventError(
            f"the data of event {event.id} is not JSON: {exc}; events carry "
            "numbers, strings, lists and objects, bulk data goes by dataref"
        ) from exc
    return data.encode(), headers


def decode_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    timestamp_ms: int = -1,
) -> Record:
    """A :class:`Record` from a Kafka record; never raises for bad content."""
    raw = value or b""
    timestamp = timestamp_ms / 1000 if timestamp_ms >= 0 else time.time()
    try:
        text_key = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        return Record(
            topic,
            partition,
            offset,
            None,
            None,
            raw,
            timestamp,
            error=f"record key {key!r} is not UTF-8 text",
        )

    try:
        event: Event | None = _decode_event(value, headers)
        error = None
    except ValidationError as exc:
        event = None
        error = "the record is not a valid event: " + "; ".join(_describe_errors(exc))
    except (EventError, ValueError) as exc:
        event, error = None, f"the record is not a valid event: {exc}"
    return Record(topic, partition, offset, text_key, event, raw, timestamp, error)


def _decode_event(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> Event:
    attributes: dict[str, str] = {}
    content_type: str | None = None
    for name, raw in headers:
        if raw is None:
            continue
        text = raw.decode("utf-8")
        if name.lower() == "content-type":
            content_type = text
        elif name.startswith("ce_"):
            attributes[name[3:]] = text

    media = (content_type or _JSON).split(";")[0].strip().lower()
    if media == _STRUCTURED:
        return Event.from_json(value or b"")
    if "specversion" not in attributes:
        names = sorted(name for name, _ in headers)
        raise EventError(
            "it has no ce_specversion header, so it is no CloudEvent in binary "
            f"content mode (headers: {names or 'none'})"
        )
    if media != _JSON:
        raise EventError(
            f"its content-type is {content_type!r}; wakefield events carry {_JSON} data"
        )

    body: dict[str, Any] = {k: attributes[k] for k in _CE_ATTRIBUTES if k in attributes}
    unknown = set(attributes) - set(_CE_ATTRIBUTES)
    if unknown:
        logger.debug("ignoring CloudEvents extensions %s", sorted(unknown))
    if "dataref" in body:
        body["dataref"] = json.loads(body["dataref"])
    body["datacontenttype"] = _JSON
    body["data"] = (
        decode_data(json.loads(value, parse_constant=_refuse_constant))
        if value
        else None
    )
    return Event.model_validate(body)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not JSON; non-finite floats are tagged")


# --- the bus ----------------------------------------------------------------


@dataclass(frozen=True)
class _TopicInfo:
    partitions: int
    max_bytes: int
    """The largest event the topic takes: the smaller of the broker's and ours."""


class KafkaBus(Bus):
    """A connection to a Kafka cluster: topics, producers and consumers.

    Connects at once, retrying while no broker answers (see the module's
    documentation); methods may be called from several threads.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        options: KafkaOptions | None = None,
        security: KafkaSecurity | None = None,
        on_retry: RetryCallback | None = None,
    ) -> None:
        if not servers:
            raise SpecError("a Kafka bus needs at least one HOST:PORT to connect to")
        self.servers = list(servers)
        self.url = "kafka://" + ",".join(self.servers)
        self.options = options if options is not None else KafkaOptions()
        self.security = security if security is not None else KafkaSecurity.from_env()
        self.on_retry = on_retry

        self._lock = threading.RLock()
        self._topic_info: dict[str, _TopicInfo] = {}
        self._clients: weakref.WeakSet[KafkaProducer | KafkaConsumer] = (
            weakref.WeakSet()
        )
        self._admin = self._connect("admin client", lambda c: _KafkaAdminClient(**c))
        logger.info("connected to %s (%s)", self.url, self.security.security_protocol)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        options: KafkaOptions | None = None,
        security: KafkaSecurity | None = None,
        on_retry: RetryCallback | None = None,
    ) -> KafkaBus:
        """A bus for ``kafka://HOST:PORT[,HOST:PORT...]`` (port 9092 if left out)."""
        return cls(
            parse_url(url), options=options, security=security, on_retry=on_retry
        )

    def __repr__(self) -> str:
        return f"KafkaBus({self.url!r}, {self.security.security_protocol})"

    # Connections

    def _client_config(self) -> dict[str, Any]:
        """Settings every kafka-python client shares."""
        return {
            "bootstrap_servers": self.servers,
            "client_id": self.options.client_id,
            "request_timeout_ms": _ms(self.options.request_timeout),
            "reconnect_backoff_max_ms": _RECONNECT_BACKOFF_MAX_MS,
            **self.security.client_options(),
        }

    def _connect(self, what: str, make: Callable[[dict[str, Any]], T]) -> T:
        """``make(config)``, retried while no broker answers.

        kafka-python's clients block until they have reached a broker; each
        attempt gets a short ``bootstrap_timeout_ms``, and the network
        client of a failed attempt is closed, so no thread is left behind.
        """
        deadline = time.monotonic() + self.options.connect_timeout
        delay = _FIRST_DELAY
        for attempt in itertools.count(1):
            made = _NetworkClients()
            remaining = deadline - time.monotonic()
            per_attempt = max(0.5, min(self.options.attempt_timeout, remaining))
            config = {
                **self._client_config(),
                "bootstrap_timeout_ms": _ms(per_attempt),
                "kafka_client": made,
            }
            try:
                return make(config)
            except _UNREACHABLE as exc:
                made.close()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusUnavailableError(
                        f"no Kafka broker answered at {', '.join(self.servers)} "
                        f"within {self.options.connect_timeout:g} s ({attempt} "
                        f"attempts) while opening the {what}; last error: {exc}. "
                        "Check that the brokers run and the bus URL is right "
                        "(scripts/kafka-broker start runs one on this machine)"
                    ) from exc
                delay = min(delay, remaining)
                logger.warning(
                    "no Kafka broker answered at %s (attempt %d, %s); retrying in "
                    "%.1f s",
                    self.url,
                    attempt,
                    exc,
                    delay,
                )
                if self.on_retry is not None:
                    self.on_retry(attempt, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
            except kerrors.KafkaError as exc:
                made.close()
                raise BusError(
                    f"could not open the {what} on {self.url}: {exc}; check the "
                    "WAKEFIELD_KAFKA_* security settings against the broker's "
                    "listeners"
                ) from exc
        raise AssertionError("not reached")

    # Topics

    def _describe(self, names: Sequence[str]) -> dict[str, int]:
        """The partition counts of those of ``names`` that exist."""
        if not names:
            return {}  # an empty list would describe every topic
        with self._lock:
            try:
                described = self._admin.describe_topics(list(names))
            except kerrors.KafkaError as exc:
                raise _translate(exc, f"reading the metadata of {list(names)}") from exc

        counts: dict[str, int] = {}
        for topic in described:
            code = topic["error_code"]
            name = topic["name"]
            if code == 0 or kerrors.for_code(code) is kerrors.LeaderNotAvailableError:
                counts[name] = len(topic["partitions"])
            elif kerrors.for_code(code) is not kerrors.UnknownTopicOrPartitionError:
                error = kerrors.for_code(code).__name__
                raise TopicError(
                    f"the broker at {self.url} does not describe topic {name!r}: "
                    f"{error}; check that this client may read its metadata"
                )
        return counts

    def ensure_topics(
        self, topics: Sequence[TopicSpec], *, create: bool = True
    ) -> None:
        specs = {spec.name: spec for spec in topics}
        for spec in specs.values():
            if spec.partitions < 1 or spec.replication < 1:
                raise TopicError(
                    f"topic {spec.name!r} declares {spec.partitions} partitions and "
                    f"replication {spec.replication}; both must be at least 1"
                )
        existing = self._describe(list(specs))
        for name, count in existing.items():
            if count != specs[name].partitions:
                logger.warning(
                    "topic %s has %d partitions, the workflow declares %d; keeping %d",
                    name,
                    count,
                    specs[name].partitions,
                    count,
                )

        missing = sorted(set(specs) - set(existing))
        if not missing:
            return
        if not create:
            raise TopicError(
                f"topics do not exist on {self.url}: {', '.join(missing)}; create "
                "them on the cluster, or let wakefield create them"
            )
        self._create([specs[name] for name in missing])

    def _create(self, specs: list[TopicSpec]) -> None:
        request = {
            spec.name: {
                "num_partitions": spec.partitions,
                "replication_factor": spec.replication,
                "configs": dict(spec.config),
            }
            for spec in specs
        }
        refused: dict[str, str] = {}
        results: list[dict[str, Any]] = []
        with self._lock:
            try:
                response = self._admin.create_topics(
                    request,
                    timeout_ms=_ms(self.options.request_timeout),
                    raise_errors=False,
                )
                results = response["topics"]
            except kerrors.AuthorizationError as exc:
                refused = dict.fromkeys(request, f"{type(exc).__name__}: {exc}")
            except kerrors.KafkaError as exc:
                raise _translate(exc, f"creating topics {sorted(request)}") from exc

        for result in results:
            error = kerrors.for_code(result["error_code"])
            reason = result.get("error_message") or error.__name__
            if error in (kerrors.NoError, kerrors.TopicAlreadyExistsError):
                continue
            if issubclass(error, kerrors.AuthorizationError) or (
                error is kerrors.PolicyViolationError
            ):
                refused[result["name"]] = reason
                continue
            raise TopicError(
                f"the broker at {self.url} refused to create topic "
                f"{result['name']!r} ({request[result['name']]['num_partitions']} "
                f"partitions, replication "
                f"{request[result['name']]['replication_factor']}): {reason}"
            )

        if refused:
            # Creation may be reserved to operators; the topics may exist anyway.
            still = sorted(set(refused) - set(self._describe(sorted(refused))))
            if still:
                reasons = "; ".join(f"{n}: {refused[n]}" for n in still)
                raise TopicError(
                    f"topics do not exist on {self.url} and this client may not "
                    f"create them: {reasons}. Ask the cluster's operators to create "
                    f"{', '.join(still)}"
                )

        created = sorted(set(request) - set(refused))
        with self._lock:
            try:
                self._admin.wait_for_topics(
                    created, timeout_ms=_ms(self.options.request_timeout)
                )
            except kerrors.KafkaError as exc:
                raise _translate(exc, f"waiting for new topics {created}") from exc
        logger.info("created topics %s on %s", created, self.url)

    def topics(self) -> set[str]:
        with self._lock:
            try:
                described = self._admin.describe_topics()
            except kerrors.KafkaError as exc:
                raise _translate(exc, "listing topics") from exc
        return {
            t["name"]
            for t in described
            if t["error_code"] == 0 and not t.get("is_internal", False)
        }

    def partitions(self, topic: str) -> int:
        counts = self._describe([topic])
        if topic not in counts:
            raise TopicError(
                f"topic {topic!r} does not exist on {self.url}; declare it in the "
                "workflow's topics so that it is created"
            )
        return counts[topic]

    def _topic(self, topic: str) -> _TopicInfo:
        """Partitions and size limit of ``topic``, looked up once."""
        info = self._topic_info.get(topic)
        if info is not None:
            return info
        partitions = self.partitions(topic)
        limit = self.options.max_event_bytes
        broker_limit = self._broker_max_bytes(topic)
        if broker_limit is not None:
            limit = min(limit, broker_limit)
        info = _TopicInfo(partitions, limit)
        self._topic_info[topic] = info
        return info

    def _broker_max_bytes(self, topic: str) -> int | None:
        """The topic's ``max.message.bytes``, or None where it cannot be read."""
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, {"max.message.bytes": None}
        )
        with self._lock:
            try:
                found = self._admin.describe_configs([resource], config_filter="all")
                value = found["topic"][topic]["max.message.bytes"]["value"]
                return int(value)
            except (kerrors.KafkaError, KeyError, TypeError, ValueError) as exc:
                logger.debug("max.message.bytes of %s unknown: %s", topic, exc)
                return None

    def _forget_topic(self, topic: str) -> None:
        self._topic_info.pop(topic, None)

    # Clients

    def producer(self) -> KafkaProducer:
        producer = KafkaProducer(self)
        self._clients.add(producer)
        return producer

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str | None,
        start: StartAt = "earliest",
        client_id: str | None = None,
    ) -> KafkaConsumer:
        consumer = KafkaConsumer(
            self, list(topics), group=group, start=start, client_id=client_id
        )
        self._clients.add(consumer)
        return consumer

    def _new_producer_client(self) -> Any:
        options = self.options
        # A request never outlives the delivery it belongs to.
        request_timeout_ms = _ms(min(options.request_timeout, options.delivery_timeout))
        return self._connect(
            "producer",
            lambda config: _KafkaProducer(
                **{**config, "request_timeout_ms": request_timeout_ms},
                enable_idempotence=True,
                acks="all",
                linger_ms=0,
                max_request_size=options.max_event_bytes,
                delivery_timeout_ms=_ms(options.delivery_timeout),
                max_block_ms=_ms(options.request_timeout),
                allow_auto_create_topics=False,
            ),
        )

    def _new_consumer_client(
        self, group: str | None, start: StartAt, client_id: str | None
    ) -> Any:
        options = self.options
        session = _ms(options.session_timeout)
        return self._connect(
            "consumer",
            lambda config: _KafkaConsumer(
                **{**config, "client_id": client_id or options.client_id},
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset=start,
                allow_auto_create_topics=False,
                session_timeout_ms=session,
                heartbeat_interval_ms=max(100, session // 3),
                max_poll_interval_ms=_ms(options.max_poll_interval),
            ),
        )

    # Offsets

    def end_offsets(self, topic: str) -> dict[int, int]:
        specs = {
            _KafkaTopicPartition(topic, p): OffsetSpec.LATEST
            for p in range(self.partitions(topic))
        }
        with self._lock:
            try:
                found = self._admin.list_partition_offsets(
                    specs, timeout_ms=_ms(self.options.request_timeout)
                )
            except kerrors.KafkaError as exc:
                raise _translate(exc, "reading end offsets", topic=topic) from exc
        return {tp.partition: int(o.offset) for tp, o in found.items()}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        partitions = [
            _KafkaTopicPartition(topic, p) for p in range(self.partitions(topic))
        ]
        deadline = time.monotonic() + self.options.request_timeout
        while True:
            with self._lock:
                try:
                    found = self._admin.list_group_offsets({group: partitions})
                    break
                except _COORDINATOR_NOT_READY as exc:
                    # The group coordinator is still starting (a new cluster).
                    if time.monotonic() >= deadline:
                        raise _translate(
                            exc, f"reading the offsets of group {group!r}", topic=topic
                        ) from exc
                except kerrors.KafkaError as exc:
                    raise _translate(
                        exc, f"reading the offsets of group {group!r}", topic=topic
                    ) from exc
            time.sleep(0.2)
        offsets = found.get(group, {})
        return {
            tp.partition: int(o.offset)
            for tp, o in offsets.items()
            if o is not None and o.offset >= 0
        }

    def close(self) -> None:
        for client in list(self._clients):
            client.close()
        with self._lock:
            try:
                self._admin.close()
            except kerrors.KafkaError as exc:
                logger.warning("closing the admin client of %s: %s", self.url, exc)


def parse_url(url: str) -> list[str]:
    """The ``HOST:PORT`` list of a ``kafka://`` URL; raises :class:`SpecError`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "kafka":
        raise SpecError(
            f"{url!r} is not a Kafka bus URL; write kafka://HOST:PORT[,HOST:PORT]"
        )
    if any(c in rest for c in "/?#@"):
        raise SpecError(
            f"Kafka bus URL {url!r} may hold only HOST:PORT pairs; security "
            "settings come from WAKEFIELD_KAFKA_* variables, not the URL"
        )
    servers = []
    for part in rest.split(","):
        part = part.strip()
        host, port = _split_host_port(part, url)
        servers.append(f"{host}:{port}")
    return servers


def _split_host_port(part: str, url: str) -> tuple[str, int]:
    if not part:
        raise SpecError(
            f"Kafka bus URL {url!r} has an empty address; e.g. kafka://host:9092"
        )
    if part.startswith("["):  # an IPv6 address: [::1]:9092
        host, _, tail = part[1:].partition("]")
        host, port = f"[{host}]", tail.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if not host or (port and not port.isdigit()):
        raise SpecError(
            f"Kafka bus URL {url!r}: {part!r} is not HOST or HOST:PORT "
            "(port a number, e.g. broker-1:9092)"
        )
    number = int(port) if port else DEFAULT_PORT
    if not 0 < number < 65536:
        raise SpecError(f"Kafka bus URL {url!r}: port {number} is outside 1-65535")
    return host, number


# --- producer ---------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    event_id: str


class KafkaProducer(Producer):
    """Publishes events through one idempotent kafka-python producer."""

    def __init__(self, bus: KafkaBus) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._client = bus._new_producer_client()

    def __repr__(self) -> str:
        return f"KafkaProducer({self.bus.url!r})"

    def publish(self, topic: str, event: Event, *, key: str | None = None) -> Delivered:
        return self.publish_many([(topic, event, key)])[0]

    def publish_many(
        self, items: Iterable[tuple[str, Event, str | None]]
    ) -> list[Delivered]:
        # Encode and check every event first: a bad one stops the whole call.
        outgoing = [self._prepare(topic, event, key) for topic, event, key in items]

        with self._lock:
            client = self._client
        sent: list[tuple[_Outgoing, Any]] = []
        try:
            for item in outgoing:
                future = client.send(
                    item.topic, value=item.value, key=item.key, headers=item.headers
                )
                sent.append((item, future))
        except kerrors.KafkaError as exc:
            item = outgoing[len(sent)]
            self._settle(sent)
            raise self._failure(exc, item, len(sent), len(outgoing)) from exc

        delivered, failure = self._settle(sent)
        if failure is not None:
            failed, error = failure
            stored = sum(1 for d in delivered if d is not None)
            raise self._failure(error, failed, stored, len(outgoing)) from error
        return [d for d in delivered if d is not None]

    def _prepare(self, topic: str, event: Event, key: str | None) -> _Outgoing:
        info = self.bus._topic(topic)
        value, headers = encode_event(event)
        key_bytes = None if key is None else key.encode("utf-8")
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            key_bytes, value, headers
        )
        if size > info.max_bytes:
            raise EventTooLargeError(
                f"event {event.id} is {size} bytes on the wire, over the limit of "
                f"{info.max_bytes} bytes for topic {topic!r} on {self.bus.url} "
                "(the smaller of the topic's max.message.bytes and max_event_bytes); "
                "nothing was sent. Write bulk data to the datastore and send its "
                "reference (dataref) in the event instead"
            )
        return _Outgoing(topic, key_bytes, value, headers, event.id)

    def _settle(
        self, sent: list[tuple[_Outgoing, Any]]
    ) -> tuple[list[Delivered | None], tuple[_Outgoing, Exception] | None]:
        """Waits for every send; the first failure, if any."""
        timeout = self.bus.options.delivery_timeout
        delivered: list[Delivered | None] = []
        failure: tuple[_Outgoing, Exception] | None = None
        for item, future in sent:
            try:
                meta = future.get(timeout=timeout)
            except kerrors.KafkaError as exc:
                delivered.append(None)
                failure = failure or (item, exc)
                continue
            delivered.append(Delivered(meta.topic, meta.partition, meta.offset))
            logger.debug(
                "published %s to %s[%d]@%d",
                item.event_id,
                meta.topic,
                meta.partition,
                meta.offset,
            )
        return delivered, failure

    def _failure(
        self, exc: Exception, item: _Outgoing, stored: int, total: int
    ) -> BusError:
        if not isinstance(exc, kerrors.KafkaTimeoutError):
            # After a refusal kafka-python's idempotent producer may fail every
            # later send (it does after a size refusal), so it is replaced.
            self._replace_client()
        if isinstance(exc, _TOO_LARGE):
            # The broker's limit is lower than the one looked up (it changed).
            self.bus._forget_topic(item.topic)
            return EventTooLargeError(
                f"the broker at {self.bus.url} refused event {item.event_id} on topic "
                f"{item.topic!r} as too large ({len(item.value)} bytes of data); "
                f"{stored} of {total} events of this call were stored. Write bulk "
                "data to the datastore and send its reference (dataref) instead"
            )
        doing = f"publishing event {item.event_id}"
        if total > 1:
            doing += f" ({stored} of {total} events of this call were stored)"
        if isinstance(exc, kerrors.KafkaTimeoutError):
            return BusUnavailableError(
                f"{doing} to topic {item.topic!r}: the broker at {self.bus.url} did "
                f"not confirm it within {self.bus.options.delivery_timeout:g} s "
                f"({exc}); it may or may not be stored"
            )
        if isinstance(exc, kerrors.UnknownTopicOrPartitionError):
            self.bus._forget_topic(item.topic)
        return _translate(exc, doing, topic=item.topic)

    def _replace_client(self) -> None:
        with self._lock:
            old, self._client = self._client, self.bus._new_producer_client()
        try:
            old.close(timeout=0)
        except kerrors.KafkaError as exc:
            logger.debug("closing a failed producer: %s", exc)

    def close(self) -> None:
        with self._lock:
            try:
                self._client.close(timeout=self.bus.options.request_timeout)
            except kerrors.KafkaError as exc:
                logger.warning("closing the producer of %s: %s", self.bus.url, exc)


# --- consumer ---------------------------------------------------------------


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the consumer about moved partitions; runs on kafka-python's IO
    thread, so it must not block."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = weakref.ref(consumer)

    def on_partitions_revoked(self, revoked: Iterable[_KafkaTopicPartition]) -> None:
        consumer = self._consumer()
        if consumer is not None:
            consumer._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Iterable[_KafkaTopicPartition]) -> None:
        consumer = self._consumer()
        if consumer is not None:
            consumer._on_assigned(assigned)


class KafkaConsumer(Consumer):
    """Reads events from topics, as a group member or alone.

    A group member joins its group on its first :meth:`poll`; a reader
    without a group owns every partition of its topics from the start, and
    its ``start`` position is fixed when it is created.  One consumer is
    used by one thread at a time.
    """

    def __init__(
        self,
        bus: KafkaBus,
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
        self._client_id = client_id
        self._paused: set[_KafkaTopicPartition] = set()
        self._closed = False
        self._last_poll: float | None = None
        self._unsettled_since: float | None = None
        # A join or sync that takes longer than this never completes: the
        # broker holds a JoinGroup for max_poll_interval at most, and a
        # SyncGroup answers within request_timeout.
        options = bus.options
        self._stuck_after = options.max_poll_interval + options.request_timeout + 5

        counts = bus._describe(topics)
        missing = [t for t in topics if t not in counts]
        if missing:
            raise TopicError(
                f"cannot subscribe to topics that do not exist on {bus.url}: "
                f"{', '.join(missing)}; declare them in the workflow's topics"
            )

        self._client = bus._new_consumer_client(group, start, client_id)
        if group is None:
            self._assign_all(counts)
        else:
            self._client.subscribe(topics, listener=_Rebalance(self))
            logger.info("consumer of %s joins group %s", topics, group)

    def _watch_membership(self, now: float) -> None:
        """Replaces a kafka-python client whose join never completes.

        kafka-python 3.0.12 can lose a SyncGroup request during a rebalance
        (seen about once in 40 rebalances on a loaded machine): the member
        then stays in ``<rebalancing>`` with no partitions and no error, and
        the group goes on without it.  A fresh client joins again.
        """
        state = self._client.group_metadata().state
        if state == MemberState.STABLE:
            self._unsettled_since = None
            return
        if self._unsettled_since is None:
            self._unsettled_since = now
            return
        if now - self._unsettled_since < self._stuck_after:
            return

        logger.warning(
            "consumer of %s has been joining group %s for %.0f s without an "
            "answer; replacing its Kafka client to join again",
            self.topics,
            self.group,
            now - self._unsettled_since,
        )
        old = self._client
        self._client = self.bus._new_consumer_client(
            self.group, self.start, self._client_id
        )
        self._client.subscribe(self.topics, listener=_Rebalance(self))
        self._unsettled_since = None
        try:
            old.close(autocommit=False, timeout_ms=_ms(1.0))
        except kerrors.KafkaError as exc:
            logger.debug("closing a stuck consumer client: %s", exc)

    def __repr__(self) -> str:
        return f"KafkaConsumer({self.topics!r}, group={self.group!r}, {self.bus.url!r})"

    def _assign_all(self, counts: Mapping[str, int]) -> None:
        """Owns every partition, its position fixed now (``start`` means now)."""
        partitions = [
            _KafkaTopicPartition(topic, p)
            for topic in self.topics
            for p in range(counts[topic])
        ]
        self._client.assign(partitions)
        if self.start == "earliest":
            self._client.seek_to_beginning(*partitions)
        else:
            self._client.seek_to_end(*partitions)
        timeout_ms = _ms(self.bus.options.request_timeout)
        try:
            for tp in partitions:
                self._client.position(tp, timeout_ms=timeout_ms)
        except kerrors.KafkaError as exc:
            self._client.close(autocommit=False, timeout_ms=0)
            raise _translate(exc, f"finding the {self.start} offsets") from exc

    # Rebalance callbacks (kafka-python's IO thread)

    def _on_revoked(self, revoked: Iterable[_KafkaTopicPartition]) -> None:
        revoked = sorted(revoked)
        if revoked:
            logger.info(
                "group %s took %s from this consumer", self.group, _names(revoked)
            )

    def _on_assigned(self, assigned: Iterable[_KafkaTopicPartition]) -> None:
        assigned = sorted(assigned)
        logger.info("group %s gave this consumer %s", self.group, _names(assigned))
        # A partition paused for long work stays paused if it comes back.
        again = [tp for tp in assigned if tp in self._paused]
        if again:
            self._client.pause(*again)

    # Consumer interface

    def poll(self, timeout: float = 1.0, max_records: int = 100) -> list[Record]:
        now = time.monotonic()
        limit = self.bus.options.max_poll_interval
        gap = None if self._last_poll is None else now - self._last_poll
        if self.group is not None and gap is not None and gap > limit / 2:
            logger.warning(
                "consumer of group %s was not polled for %.0f s; a member that "
                "does not poll for %.0f s is evicted: keep polling during long "
                "work (pause, poll, commit, resume)",
                self.group,
                gap,
                limit,
            )
        if self.group is not None:
            self._watch_membership(now)

        try:
            batches = self._client.poll(
                timeout_ms=_ms(max(timeout, 0.0)), max_records=max_records
            )
        except kerrors.KafkaError as exc:
            raise _translate(exc, f"polling {self.topics}") from exc
        self._last_poll = time.monotonic()

        records = [
            decode_record(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                r.headers or [],
                r.timestamp,
            )
            for batch in batches.values()
            for r in batch
        ]
        for record in records:
            if record.event is None:
                logger.warning(
                    "undecodable record %s[%d]@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    record.error,
                )
            else:
                logger.debug(
                    "consumed %s from %s[%d]@%d",
                    record.event.id,
                    record.topic,
                    record.partition,
                    record.offset,
                )
        return records

    def commit(self, record: Record) -> None:
        if self.group is None:
            return  # a reader without a group keeps no offsets
        tp = _KafkaTopicPartition(record.topic, record.partition)
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if tp not in self._client.assignment():
            raise CommitError(
                f"cannot commit {where} for group {self.group!r}: the partition has "
                "moved to another member in a rebalance since the record was "
                "polled; its new owner will handle the record again"
            )
        try:
            self._client.commit(
                {tp: OffsetAndMetadata(record.offset + 1, "", -1)},
                timeout_ms=_ms(self.bus.options.request_timeout),
            )
        except _REBALANCED as exc:
            raise CommitError(
                f"cannot commit {where} for group {self.group!r}: the group has "
                f"rebalanced ({type(exc).__name__}); the partition's next owner "
                "will handle the record again"
            ) from exc
        except kerrors.KafkaError as exc:
            raise _translate(
                exc,
                f"committing for group {self.group!r}",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            ) from exc
        logger.debug("group %s committed %s", self.group, where)

    def assignment(self) -> set[TopicPartition]:
        return {
            TopicPartition(tp.topic, tp.partition) for tp in self._client.assignment()
        }

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        wanted = {_KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions}
        self._paused |= wanted
        owned = wanted & set(self._client.assignment())
        if owned:
            self._client.pause(*owned)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        wanted = {_KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions}
        self._paused -= wanted
        owned = wanted & set(self._client.assignment())
        if owned:
            self._client.resume(*owned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        tp = _KafkaTopicPartition(partition.topic, partition.partition)
        if tp not in self._client.assignment():
            raise BusError(
                f"cannot seek {partition.topic}[{partition.partition}]: this consumer "
                f"does not own it (it owns {_names(self._client.assignment())}); "
                "poll until the group assigns it"
            )
        self._client.seek(tp, offset)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close(
                autocommit=False, timeout_ms=_ms(self.bus.options.request_timeout)
            )
        except kerrors.KafkaError as exc:
            logger.warning("closing consumer of %s: %s", self.topics, exc)
        if self.group is not None:
            logger.info("consumer of %s left group %s", self.topics, self.group)


# --- helpers ----------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _names(partitions: Iterable[_KafkaTopicPartition]) -> str:
    text = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))
    return text or "no partitions"


class _NetworkClients:
    """Makes kafka-python's network clients and remembers them, so that the
    ones of a client whose constructor failed can be closed (each runs an IO
    thread that nothing else would stop)."""

    def __init__(self) -> None:
        self.made: list[KafkaNetClient] = []

    def __call__(self, **config: Any) -> KafkaNetClient:
        client = KafkaNetClient(**config)
        self.made.append(client)
        return client

    def close(self) -> None:
        for client in self.made:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - cleanup after a failure
                logger.debug("closing a network client: %s", exc)


def _translate(
    exc: Exception,
    doing: str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> BusError:
    """A wakefield error for a kafka-python error, naming where it happened."""
    where = ""
    if topic is not None:
        where = f" on topic {topic!r}"
        if partition is not None:
            where += f" partition {partition}"
            if offset is not None:
                where += f" offset {offset}"
    text = f"{doing}{where} failed: {exc}"
    if isinstance(exc, _TOO_LARGE):
        return EventTooLargeError(text)
    if isinstance(exc, kerrors.UnknownTopicOrPartitionError):
        return TopicError(f"{text}; the topic or partition does not exist")
    if isinstance(exc, _REBALANCED):
        return CommitError(text)
    if isinstance(exc, kerrors.AuthorizationError):
        return BusError(f"{text}; this client is not authorized for that")
    if isinstance(exc, (*_UNREACHABLE, kerrors.RequestTimedOutError)):
        return BusUnavailableError(f"{text}; is the broker running?")
    return BusError(text)
