"""Shared fixtures: one local Ray instance per test session, a fresh working
folder per test (its own embedded bus and datastore), and the Kafka broker
the CI starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray shared by every test that needs actors (start-up takes seconds)."""
    import ray

    from wakefield.runtime.runner import _short_temp_dir

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            namespace="wakefield",
            logging_level="WARNING",
            _temp_dir=_short_temp_dir(),
        )
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder: relative bus and datastore paths land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if os.environ.get("WAKEFIELD_REQUIRE_KAFKA") == "1":
        return
    # Without a broker the kafka-marked tests skip themselves; nothing to do here.
