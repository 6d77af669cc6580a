"""Fixtures for tests against a real Apache Kafka broker.

The broker is found at ``WAKEFIELD_TEST_KAFKA`` (``127.0.0.1:9092`` unless
set); ``scripts/kafka-broker start`` runs one on this machine.  When no
broker answers, the tests that need one are skipped with the reason, or,
with ``WAKEFIELD_REQUIRE_KAFKA=1`` (as CI sets it), they fail as errors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wakefield.bus.kafka import KafkaBus, KafkaOptions
from wakefield.errors import BusError

KAFKA_ENV = "WAKEFIELD_TEST_KAFKA"
REQUIRE_ENV = "WAKEFIELD_REQUIRE_KAFKA"
DEFAULT_ADDRESS = "127.0.0.1:9092"
BROKER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kafka-broker"

# The broker's smallest allowed session (group.min.session.timeout.ms), so a
# crashed member's partitions move on within seconds.
TEST_SESSION_TIMEOUT = 6.0


def kafka_address() -> str:
    """HOST:PORT of the broker the tests use."""
    return os.environ.get(KAFKA_ENV, DEFAULT_ADDRESS)


def kafka_required() -> bool:
    """True where a missing broker is an error rather than a reason to skip."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def no_broker(reason: str) -> None:
    """Skips the test, or fails it where a broker is required."""
    if kafka_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is an error)", pytrace=False)
    pytest.skip(f"{reason}; run scripts/kafka-broker start, or set {KAFKA_ENV}")


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def quick_options(**overrides: Any) -> KafkaOptions:
    """Client options for tests: short time-outs, quick failover."""
    settings: dict[str, Any] = {
        "client_id": "wakefield-tests",
        "connect_timeout": 10.0,
        "request_timeout": 10.0,
        "delivery_timeout": 30.0,
        "session_timeout": TEST_SESSION_TIMEOUT,
        # Bounds a rebalance that waits for a member, and so how soon a
        # member whose join got lost joins again (see KafkaConsumer).
        "max_poll_interval": 20.0,
    }
    settings.update(overrides)
    return KafkaOptions.load(settings)


def _port_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def kafka_server() -> str:
    """The address of a broker that answers, checked once per session."""
    address = kafka_address()
    if not _port_answers(address):
        no_broker(f"no Kafka broker answers at {address}")
    try:
        bus = KafkaBus([address], options=quick_options(connect_timeout=10.0))
    except BusError as exc:
        no_broker(f"the Kafka broker at {address} does not work: {exc}")
    bus.close()
    return address


@pytest.fixture
def kafka_bus(kafka_server: str) -> Iterator[KafkaBus]:
    """A bus on the test broker, closed after the test."""
    bus = KafkaBus([kafka_server], options=quick_options())
    yield bus
    bus.close()


def write_raw_kafka(
    bus: KafkaBus,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Stores bytes that need not be an event, past wakefield's producer."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bus.servers,
        bootstrap_timeout_ms=10_000,
        allow_auto_create_topics=False,
    )
    try:
        producer.send(topic, value=value, key=key, headers=headers or []).get(30)
    finally:
        producer.close(timeout=10)


@dataclass
class ScriptBroker:
    """A broker of its own, run by scripts/kafka-broker, for tests that stop
    and restart it without disturbing the shared one."""

    port: int
    dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str, *extra: str, timeout: float = 300) -> None:
        args = [str(BROKER_SCRIPT), command, "--port", str(self.port)]
        args += ["--dir", str(self.dir), *extra]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka-broker {command} failed ({done.returncode}):\n"
                f"{done.stderr[-3000:]}"
            )

    def start(self, *, fresh: bool = False) -> None:
        self._run("start", *(["--fresh"] if fresh else []))

    def stop(self) -> None:
        self._run("stop", timeout=120)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptBroker]:
    """A second broker on port 19392 (or ``WAKEFIELD_TEST_KAFKA_OWN_PORT``)."""
    if shutil.which("java") is None:
        no_broker("java is not installed, so scripts/kafka-broker cannot run")
    port = int(os.environ.get("WAKEFIELD_TEST_KAFKA_OWN_PORT", "19392"))
    broker = ScriptBroker(port, tmp_path_factory.mktemp("kafka-own"))
    try:
        broker.start(fresh=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        no_broker(f"could not start a broker of its own on port {port}: {exc}")
    yield broker
    broker.stop()
