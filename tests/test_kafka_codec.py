"""The Kafka backend's parts that need no broker: the CloudEvents binary
mode codec, security settings from the environment, bus URLs, and the
start-up retry against an address where nothing listens."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from pathlib import Path

import pytest

from wakefield.bus.kafka import (
    KafkaBus,
    KafkaOptions,
    KafkaSecurity,
    decode_record,
    encode_event,
    parse_url,
)
from wakefield.errors import BusUnavailableError, SpecError
from wakefield.events import DataRef, Event

SECRET = "s3cr3t-pa55word"


def _full_event() -> Event:
    return Event(
        source="wakefield://codec/test",
        type="org.wakefield.dataset.ready",
        subject="scan-1",
        data={"x": [1.0, math.nan, -math.inf], "name": "phase", "n": 3},
        dataref=DataRef(uri="datasets/r/scan.zarr", hash="sha256:" + "0f" * 32),
        runid="run-1",
        correlationid="c-1",
        causationid="e-0",
    )


def _decode(value: bytes | None, headers: list[tuple[str, bytes]]) -> object:
    return decode_record("t", 0, 5, b"k", value, headers, 1_700_000_000_000)


# --- codec ------------------------------------------------------------------


def test_binary_mode_headers_carry_every_attribute() -> None:
    """Every attribute becomes a ce_ header; the value is the data alone."""
    event = _full_event()
    value, headers = encode_event(event)
    named = dict(headers)

    assert named["ce_specversion"] == b"1.0"
    assert named["ce_id"] == event.id.encode()
    assert named["ce_source"] == b"wakefield://codec/test"
    assert named["ce_type"] == b"org.wakefield.dataset.ready"
    assert named["ce_subject"] == b"scan-1"
    assert json.loads(named["ce_dataref"])["uri"] == "datasets/r/scan.zarr"
    assert named["ce_runid"] == b"run-1"
    assert named["ce_correlationid"] == b"c-1"
    assert named["ce_causationid"] == b"e-0"
    assert named["content-type"] == b"application/json"
    assert b"NaN" not in value and json.loads(value)["x"][1] == {"$float": "nan"}


def test_binary_mode_round_trip() -> None:
    """Decoding what was encoded gives back the same event."""
    event = _full_event()
    value, headers = encode_event(event)

    record = decode_record("t", 2, 9, b"run-1", value, headers, 1_700_000_000_000)

    assert record.error is None and record.event is not None
    assert record.event.model_dump(exclude={"data"}) == event.model_dump(
        exclude={"data"}
    )
    assert math.isnan(record.event.data["x"][1])
    assert record.key == "run-1"
    assert (record.topic, record.partition, record.offset) == ("t", 2, 9)
    assert record.timestamp == 1_700_000_000.0


def test_event_without_optional_attributes_round_trips() -> None:
    """An event with no subject, dataref, ids or data survives the trip."""
    event = Event(source="s", type="t")
    value, headers = encode_event(event)

    record = decode_record("t", 0, 0, None, value, headers)

    assert record.event == event and record.key is None
    assert "ce_subject" not in dict(headers)


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"{}", [], "no ce_specversion"),
        (b"not json", [("ce_specversion", b"1.0")], "not a valid event"),
        (
            b"NaN",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"t"),
            ],
            "bare NaN",
        ),
        (
            b"{}",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"t"),
                ("ce_dataref", b"{broken"),
            ],
            "not a valid event",
        ),
        (b"{}", [("ce_specversion", b"\xff")], "not a valid event"),
        (
            b"<a/>",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"t"),
                ("content-type", b"application/xml"),
            ],
            "application/xml",
        ),
        (
            b"{}",
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"t")],
            "source",
        ),
    ],
    ids=[
        "no-headers",
        "bad-json",
        "bare-nan",
        "bad-dataref",
        "not-utf8",
        "xml",
        "no-source",
    ],
)
def test_undecodable_records_become_records_with_an_error(
    value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    """A record that is no valid event arrives with event=None, the reason
    and its raw value; decoding never raises."""
    record = _decode(value, headers)

    assert record.event is None  # type: ignore[attr-defined]
    assert reason in record.error  # type: ignore[attr-defined]
    assert record.raw == value  # type: ignore[attr-defined]


def test_key_that_is_not_utf8_is_an_error_record() -> None:
    """A key that is not UTF-8 text makes an error record, not a crash."""
    value, headers = encode_event(Event(source="s", type="t"))

    record = decode_record("t", 0, 0, b"\xff\xfe", value, headers)

    assert record.event is None and "key" in (record.error or "")


def test_structured_mode_records_are_understood() -> None:
    """A record in structured content mode (one JSON document) decodes too."""
    event = _full_event()
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]

    record = _decode(event.to_json(), headers)

    assert record.event is not None  # type: ignore[attr-defined]
    assert record.event.id == event.id  # type: ignore[attr-defined]


def test_unknown_extensions_are_ignored() -> None:
    """An extension wakefield does not know (a trace parent) is skipped."""
    value, headers = encode_event(Event(source="s", type="t"))

    record = _decode(value, [*headers, ("ce_traceparent", b"00-abc-def-01")])

    assert record.event is not None and record.error is None  # type: ignore[attr-defined]


# --- security settings ------------------------------------------------------


def test_no_settings_mean_plaintext() -> None:
    """Without variables the bus connects in plain text."""
    security = KafkaSecurity.from_env({})

    assert security.client_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_settings_from_the_environment(tmp_path: Path) -> None:
    """SASL over TLS: mechanism, user, password and CA file reach the client."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    security = KafkaSecurity.from_env(
        {
            "WAKEFIELD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "WAKEFIELD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "WAKEFIELD_KAFKA_SASL_USERNAME": "wakefield",
            "WAKEFIELD_KAFKA_SASL_PASSWORD": SECRET,
            "WAKEFIELD_KAFKA_SSL_CAFILE": str(ca),
        }
    )
    options = security.client_options()

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "wakefield"
    assert options["sasl_plain_password"] == SECRET
    assert options["ssl_cafile"] == str(ca)


def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    """The password is absent from reprs, dumps and logged client options."""
    security = KafkaSecurity.from_env(
        {
            "WAKEFIELD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WAKEFIELD_KAFKA_SASL_MECHANISM": "PLAIN",
            "WAKEFIELD_KAFKA_SASL_USERNAME": "u",
            "WAKEFIELD_KAFKA_SASL_PASSWORD": SECRET,
        }
    )
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").debug("options: %s", security.client_options())

    assert SECRET not in repr(security)
    assert SECRET not in str(security.dump())
    assert SECRET not in caplog.text


def test_sasl_without_credentials_names_the_missing_variables() -> None:
    """SASL_SSL without a user and password says which variables to set."""
    with pytest.raises(SpecError) as raised:
        KafkaSecurity.from_env(
            {
                "WAKEFIELD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "WAKEFIELD_KAFKA_SASL_MECHANISM": "PLAIN",
            }
        )

    assert "WAKEFIELD_KAFKA_SASL_USERNAME" in str(raised.value)
    assert "WAKEFIELD_KAFKA_SASL_PASSWORD" in str(raised.value)


def test_bad_values_are_named_with_what_is_allowed() -> None:
    """An unknown mechanism is refused with the variable and the choices."""
    with pytest.raises(SpecError) as raised:
        KafkaSecurity.from_env(
            {
                "WAKEFIELD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "WAKEFIELD_KAFKA_SASL_MECHANISM": "GSSAPI",
                "WAKEFIELD_KAFKA_SASL_USERNAME": "u",
                "WAKEFIELD_KAFKA_SASL_PASSWORD": SECRET,
            }
        )

    message = str(raised.value)
    assert "WAKEFIELD_KAFKA_SASL_MECHANISM" in message
    assert "SCRAM-SHA-256" in message and "GSSAPI" in message
    assert SECRET not in message


def test_settings_that_contradict_the_protocol_are_refused(tmp_path: Path) -> None:
    """TLS files with PLAINTEXT, or a password without SASL, are errors."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(SpecError, match="does not use TLS"):
        KafkaSecurity.from_env({"WAKEFIELD_KAFKA_SSL_CAFILE": str(ca)})
    with pytest.raises(SpecError, match="SASL_SSL or SASL_PLAINTEXT"):
        KafkaSecurity.from_env({"WAKEFIELD_KAFKA_SASL_PASSWORD": SECRET})
    with pytest.raises(SpecError, match="WAKEFIELD_KAFKA_SSL_CAFILE"):
        KafkaSecurity.from_env(
            {
                "WAKEFIELD_KAFKA_SECURITY_PROTOCOL": "SSL",
                "WAKEFIELD_KAFKA_SSL_CAFILE": str(tmp_path / "absent.pem"),
            }
        )


def test_settings_file_with_the_environment_on_top(tmp_path: Path) -> None:
    """The file named by WAKEFIELD_KAFKA_CONFIG_FILE is read; the
    environment wins where both set a value."""
    file = tmp_path / "kafka.env"
    file.write_text(
        "# mounted from a Kubernetes secret\n"
        "WAKEFIELD_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
        "export WAKEFIELD_KAFKA_SASL_MECHANISM='SCRAM-SHA-256'\n"
        'WAKEFIELD_KAFKA_SASL_USERNAME="from-file"\n'
        f"WAKEFIELD_KAFKA_SASL_PASSWORD={SECRET}\n"
    )

    security = KafkaSecurity.from_env(
        {
            "WAKEFIELD_KAFKA_CONFIG_FILE": str(file),
            "WAKEFIELD_KAFKA_SASL_USERNAME": "from-env",
        }
    )

    assert security.sasl_mechanism == "SCRAM-SHA-256"
    assert security.sasl_username == "from-env"
    assert security.sasl_password is not None
    assert security.sasl_password.get_secret_value() == SECRET


def test_settings_file_with_an_unknown_name_is_refused(tmp_path: Path) -> None:
    """A misspelt name in the settings file is an error with its line."""
    file = tmp_path / "kafka.env"
    file.write_text("WAKEFIELD_KAFKA_SASL_USER=me\n")

    with pytest.raises(SpecError, match=r"kafka.env:1.*WAKEFIELD_KAFKA_SASL_USERNAME"):
        KafkaSecurity.from_env({"WAKEFIELD_KAFKA_CONFIG_FILE": str(file)})


def test_missing_settings_file_is_refused(tmp_path: Path) -> None:
    """A settings file that cannot be read is an error naming it."""
    with pytest.raises(SpecError, match="absent.env"):
        KafkaSecurity.from_env(
            {"WAKEFIELD_KAFKA_CONFIG_FILE": str(tmp_path / "absent.env")}
        )


# --- URLs and options -------------------------------------------------------


def test_bus_urls_list_their_brokers() -> None:
    """kafka:// URLs give HOST:PORT lists; the port defaults to 9092."""
    assert parse_url("kafka://a:9093,b") == ["a:9093", "b:9092"]
    assert parse_url("kafka://[::1]:9094") == ["[::1]:9094"]


@pytest.mark.parametrize(
    "url",
    [
        "kafka://",
        "http://a:9092",
        "kafka://a:port",
        "kafka://user:pw@a:9092",
        "kafka://a:0",
    ],
)
def test_bad_bus_urls_are_refused(url: str) -> None:
    """A URL that is not kafka://HOST[:PORT],... raises SpecError."""
    with pytest.raises(SpecError):
        parse_url(url)


def test_options_accept_durations_and_sizes() -> None:
    """Options are read the way YAML writes them, and checked."""
    options = KafkaOptions.load({"connect_timeout": "2m", "max_event_bytes": "512KiB"})

    assert options.connect_timeout == 120.0
    assert options.max_event_bytes == 512 * 1024
    with pytest.raises(ValueError, match="session_timeout"):
        KafkaOptions.load({"session_timeout": "100ms"})


# --- start-up retry ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_broker_is_retried_then_reported() -> None:
    """With no broker, each retry is reported with a growing delay, then
    BusUnavailableError names the address; no client thread is left over."""
    address = f"127.0.0.1:{_free_port()}"
    retries: list[tuple[int, float]] = []
    before = {t.ident for t in threading.enumerate()}

    with pytest.raises(BusUnavailableError) as raised:
        KafkaBus(
            [address],
            options=KafkaOptions(connect_timeout=3.0, attempt_timeout=0.5),
            security=KafkaSecurity(),
            on_retry=lambda attempt, delay, error: retries.append((attempt, delay)),
        )

    assert address in str(raised.value)
    assert len(retries) >= 2
    assert [a for a, _ in retries] == list(range(1, len(retries) + 1))
    assert retries[1][1] >= retries[0][1]
    leftover = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("kafka")
    ]
    assert leftover == []
