"""The simulation service: seeded designs, Ray fan-out into whole chunks,
per-sample status and provenance, checked with a closed-form simulator."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import wakefield.api as api
from wakefield.datastore import Datastore
from wakefield.design import Design, sample, unit_cube
from wakefield.errors import WorkflowError
from wakefield.loader import loads_workflow
from wakefield.services.simulation import failure_reasons
from wakefield.variables import Setting

SCAN = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: scan}}
    spec:
      services:
        - name: scan
          uses: simulation
          config:
            simulator: "wakefield.testing:Analytic"
            options: {options}
            settings: {{z: {{value: 1.5}}}}
            design: {{method: {method}, samples: 400, seed: 3}}
            chunk: 50
          subscribe: {{requests: scan.requests}}
          publish: {{datasets: scan.datasets}}
      start: [{{topic: scan.requests}}]
      complete: {{when: [{{topic: scan.datasets}}], timeout: 5m}}
"""


@pytest.mark.parametrize("method", ["random", "lhs", "sobol", "halton"])
def test_designs_are_seeded_and_inside_the_ranges(method: str) -> None:
    """Every design gives the same points for the same seed, inside each range."""
    settings = [
        Setting(name="a", unit="deg", range=(-40, -20), default=-25),
        Setting(name="b", unit="%", range=(50, 110), default=100),
    ]
    design = Design(method=method, samples=256, seed=11)
    first, second = sample(design, settings), sample(design, settings)
    np.testing.assert_array_equal(first["a"], second["a"])
    assert first["a"].min() >= -40 and first["a"].max() <= -20
    assert first["b"].min() >= 50 and first["b"].max() <= 110
    other = sample(design.model_copy(update={"seed": 12}), settings)
    assert not np.array_equal(first["a"], other["a"])


def test_latin_hypercube_fills_every_stratum() -> None:
    """A Latin hypercube puts exactly one point in each of n equal strata per setting."""
    points = unit_cube(Design(method="lhs", samples=64, seed=1), 3)
    for column in points.T:
        assert sorted(np.floor(column * 64).astype(int)) == list(range(64))


def test_grid_is_full_factorial() -> None:
    """A grid of 100 samples over two settings is 10 x 10 points, edges included."""
    points = unit_cube(Design(method="grid", samples=100), 2)
    assert points.shape == (100, 2)
    assert set(np.round(points[:, 0], 6)) == set(np.round(np.linspace(0, 1, 10), 6))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_scan_flags_failed_samples_and_keeps_provenance(workdir: Path) -> None:
    """A scan writes every sample once; failed and non-finite samples are flagged
    with their reasons; units, a fixed setting and provenance are in the dataset."""
    wf = loads_workflow(
        textwrap.dedent(
            SCAN.format(options="{fail_above: 0.8, nan_below: -0.9}", method="sobol")
        )
    )
    result = api.run(wf)
    assert result.state == "completed", result.reason
    event = result.results["scan.datasets"][0]
    store = Datastore(result.datastore)
    ds = store.open_dataset(event["dataref"]["uri"], verify=True).load()

    assert ds.sizes["sample"] == 400
    assert (ds.z.values == 1.5).all() and ds.x.attrs["units"] == "m"
    ok = ds.status.values == 0
    np.testing.assert_allclose(ds.y.values[ok], ds.x.values[ok] ** 2 + 1.5)
    reasons = failure_reasons(ds)
    failed = set(np.flatnonzero(ds.x.values > 0.8))
    nonfinite = set(np.flatnonzero(ds.x.values < -0.9))
    assert set(reasons) == failed | nonfinite
    assert all("above 0.8" in reasons[i] for i in failed)
    assert all(reasons[i] == "non-finite y" for i in nonfinite)
    assert (ds.status.values[sorted(nonfinite)] == 2).all()
    assert event["data"]["failed"] == len(failed | nonfinite)
    assert (
        ds.attrs["design"]["seed"] == 3
        and ds.attrs["simulator"] == "wakefield.testing:Analytic"
    )
    assert ds.attrs["wakefield_version"] and "numpy" in ds.attrs["packages"]
    plots = event["data"]["plots"]
    assert plots and all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in plots)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_same_seed_gives_the_same_dataset(workdir: Path) -> None:
    """Two runs with one seed (noise drawn from per-chunk generators) give identical data."""
    text = textwrap.dedent(SCAN.format(options="{noise: 0.1}", method="lhs"))
    datasets = []
    for _ in range(2):
        result = api.run(loads_workflow(text))
        uri = result.results["scan.datasets"][0]["dataref"]["uri"]
        datasets.append(Datastore(result.datastore).open_dataset(uri).load())
    for name in ("x", "y", "spot", "status"):
        np.testing.assert_array_equal(
            datasets[0][name].values, datasets[1][name].values
        )


def test_bad_simulator_options_are_caught_when_the_workflow_loads() -> None:
    """A misspelt simulator option is an error at load time, naming the option."""
    text = textwrap.dedent(SCAN.format(options="{fail_abve: 0.8}", method="sobol"))
    with pytest.raises(WorkflowError, match=r"options.fail_abve.*Extra inputs"):
        loads_workflow(text)


def test_unknown_simulator_lists_the_registered_ones() -> None:
    """An unknown simulator name is an error listing the registered simulators."""
    text = textwrap.dedent(SCAN.format(options="{}", method="sobol")).replace(
        '"wakefield.testing:Analytic"', "nosuchsim"
    )
    with pytest.raises(WorkflowError, match="no plug-in named 'nosuchsim'"):
        loads_workflow(text)
