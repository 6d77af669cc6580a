"""The replay kind: every sample of a dataset once, in order or a seeded order,
at the configured rate, by reference or inline, and the inline encoding."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import wakefield.api as api
from wakefield.datastore import Datastore
from wakefield.errors import EventError
from wakefield.loader import loads_workflow
from wakefield.services.replay import (
    ReplayConfig,
    dataset_from_inline,
    inline_dataset,
    replay_order,
)

SEED = 11

REPLAY = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: {name}}}
    spec:
      datastore: {{root: {root}}}
      services:
        - name: stream
          uses: replay
          config: {config}
          publish: {{samples: {name}.samples}}
      complete:
        when: [{{topic: {name}.samples, count: {count}}}]
        timeout: 3m
"""


def measurements(n: int = 7) -> xr.Dataset:
    """A small dataset of n samples: a float32 trace, a scalar, and a status."""
    rng = np.random.default_rng(SEED)
    status = np.zeros(n, dtype=np.int8)
    status[3] = 1  # flagged by its simulation
    return xr.Dataset(
        {
            "trace": (
                ("sample", "time"),
                rng.normal(size=(n, 16)).astype(np.float32),
                {"units": "V"},
            ),
            "charge": ("sample", rng.uniform(0, 1, n), {"units": "nC"}),
            "status": ("sample", status),
        },
        coords={"time": ("time", np.linspace(-1.0, 1.0, 16), {"units": "ms"})},
        attrs={"title": "test measurements"},
    )


def run_replay(workdir: Path, name: str, config: str, count: int) -> tuple:
    store = Datastore(workdir / "data")
    source = measurements()
    store.write_dataset(source, "inputs/measurements.zarr")
    text = REPLAY.format(name=name, root=workdir / "data", config=config, count=count)
    result = api.run(loads_workflow(textwrap.dedent(text)))
    assert result.state == "completed", result.reason
    return result, store, source


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_replay_emits_every_sample_once_in_order_at_the_rate(workdir: Path) -> None:
    """Each unflagged sample is emitted once, in order, as a one-sample dataset,
    never faster than the configured interval."""
    result, store, source = run_replay(
        workdir,
        "replay-order",
        "{dataset: inputs/measurements.zarr, interval: 300ms}",
        count=6,
    )
    events = result.results["replay-order.samples"]

    assert [e["data"]["sample"] for e in events] == [0, 1, 2, 4, 5, 6]
    assert [e["data"]["position"] for e in events] == list(range(6))
    assert {e["data"]["total"] for e in events} == {6}
    for event in events:
        assert event["type"] == "org.wakefield.dataset.ready"
        one = store.open_dataset(event["dataref"]["uri"], verify=True).load()
        index = event["data"]["sample"]
        assert one.sizes["sample"] == 1 and one["trace"].dtype == np.float32
        np.testing.assert_array_equal(
            one["trace"].values[0], source["trace"].values[index]
        )
        assert one["charge"].attrs["units"] == "nC"
    # The rate, as lower bounds only (a loaded machine may make it slower):
    # one interval per event on average, never two within half an interval.
    times = [datetime.fromisoformat(e["time"]) for e in events]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert sum(gaps) >= 0.3 * len(gaps) * 0.95
    assert min(gaps) >= 0.3 / 2 * 0.95


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_replay_inline_in_a_seeded_order(workdir: Path) -> None:
    """A shuffled replay of count samples follows the seeded order and carries
    each sample inline, equal to the source bit for bit."""
    config = (
        "{dataset: inputs/measurements.zarr, interval: 100ms, order: shuffled, "
        "seed: 5, count: 4, carry: inline}"
    )
    result, _, source = run_replay(workdir, "replay-inline", config, count=4)
    events = result.results["replay-inline.samples"]

    expected = replay_order(
        source, ReplayConfig(order="shuffled", seed=5, count=4)
    ).tolist()
    assert [e["data"]["sample"] for e in events] == expected
    for event in events:
        assert event["type"] == "org.wakefield.sample" and "dataref" not in event
        one = dataset_from_inline(event["data"]["inline"])
        index = event["data"]["sample"]
        np.testing.assert_array_equal(
            one["trace"].values[0], source["trace"].values[index]
        )
        assert one["charge"].values[0] == source["charge"].values[index]


def test_inline_encoding_round_trips_float32_exactly() -> None:
    """float32 values, integer flags, string coordinates and units survive the
    inline encoding unchanged."""
    ds = measurements().assign_coords(channel=("channel", np.array(["a", "bc"])))
    back = dataset_from_inline(inline_dataset(ds))
    assert back["trace"].dtype == np.float32
    np.testing.assert_array_equal(back["trace"].values, ds["trace"].values)
    np.testing.assert_array_equal(back["status"].values, ds["status"].values)
    assert back["status"].dtype == np.int8
    assert list(back["channel"].values) == ["a", "bc"]
    assert back["trace"].attrs["units"] == "V" and back.attrs["title"]


def test_order_skips_flagged_samples_and_starts_where_told() -> None:
    """Sequential order starts at start, leaves out flagged samples, stops at count."""
    ds = measurements()
    order = replay_order(ds, ReplayConfig(start=2, count=3))
    assert order.tolist() == [2, 4, 5]
    every = replay_order(ds, ReplayConfig(skip_flagged=False))
    assert every.tolist() == list(range(7))


def test_malformed_inline_body_is_an_event_error() -> None:
    """An inline body that is not xarray's dictionary form is refused, saying so."""
    with pytest.raises(EventError, match="data_vars"):
        dataset_from_inline([1, 2, 3])
    with pytest.raises(EventError, match="cannot be read"):
        dataset_from_inline({"data_vars": {"x": {"dims": ["a"]}}})
