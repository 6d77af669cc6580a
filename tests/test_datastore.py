"""The datastore: complete-then-published datasets, hashes, safe references,
and parallel writers that own whole chunks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from wakefield.datastore import Datastore, VariableLayout
from wakefield.errors import DataRefError, DatastoreError, IntegrityError


def _dataset(n: int = 100, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "energy": ("sample", rng.normal(size=n), {"units": "eV"}),
            "image": (("sample", "x", "y"), rng.random((n, 8, 8)).astype("float32")),
        },
        coords={"x": np.arange(8), "y": np.arange(8)},
        attrs={"seed": seed},
    )


def test_write_then_open_keeps_values_units_and_attrs(tmp_path: Path) -> None:
    """A written dataset opens with the same values, variable units and attributes."""
    store = Datastore(tmp_path)
    ds = _dataset()
    ref = store.write_dataset(ds, "datasets/a.zarr", chunks={"sample": 25})
    back = store.open_dataset(ref, verify=True).load()
    xr.testing.assert_identical(back, ds)
    assert ref.hash.startswith("sha256:") and ref.kind == "dataset"


def test_same_content_gives_same_hash(tmp_path: Path) -> None:
    """The content hash depends on the data, not on where or when it was written."""
    store = Datastore(tmp_path)
    a = store.write_dataset(_dataset(seed=1), "a.zarr")
    b = store.write_dataset(_dataset(seed=1), "b.zarr")
    c = store.write_dataset(_dataset(seed=2), "c.zarr")
    assert a.hash == b.hash != c.hash


def test_published_dataset_is_never_replaced(tmp_path: Path) -> None:
    """Writing again to a published URI keeps the first dataset (idempotent retries)."""
    store = Datastore(tmp_path)
    first = store.write_dataset(_dataset(seed=1), "a.zarr")
    second = store.write_dataset(_dataset(seed=2), "a.zarr")
    assert second == first
    assert store.open_dataset(first).attrs["seed"] == 1


def test_tampering_is_detected(tmp_path: Path) -> None:
    """Changing a published file makes verification fail."""
    store = Datastore(tmp_path)
    ref = store.write_dataset(_dataset(), "a.zarr")
    chunk = next(
        p
        for p in (tmp_path / "a.zarr" / "energy").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[::-1])
    with pytest.raises(IntegrityError, match="changed after it was published"):
        store.open_dataset(ref, verify=True)


def test_reference_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    """A reference whose hash differs from the stored dataset's is refused."""
    store = Datastore(tmp_path)
    ref = store.write_dataset(_dataset(), "a.zarr")
    wrong = ref.model_copy(update={"hash": "sha256:" + "1" * 64})
    with pytest.raises(IntegrityError):
        store.open_dataset(wrong)


@pytest.mark.parametrize(
    "uri",
    [
        "../outside.zarr",
        "/etc/passwd",
        "a/../../b",
        "s3://bucket/x",
        "file:///tmp/x",
        "",
        ".",
    ],
)
def test_references_cannot_leave_the_root(tmp_path: Path, uri: str) -> None:
    """Absolute paths, '..' and other schemes are refused."""
    with pytest.raises(DataRefError):
        Datastore(tmp_path).resolve(uri)


def test_unpublished_dataset_cannot_be_opened(tmp_path: Path) -> None:
    """A dataset whose writer has not finished is not visible."""
    store = Datastore(tmp_path)
    layout = store.layout(
        "half.zarr",
        dims={"sample": 10},
        chunks={"sample": 5},
        variables={"v": VariableLayout(("sample",))},
    )
    assert not store.exists("half.zarr")
    with pytest.raises(DatastoreError, match="has not finished"):
        store.open_dataset("half.zarr")
    layout.discard()


def test_regions_must_cover_whole_chunks(tmp_path: Path) -> None:
    """A region that shares a chunk with another writer is refused."""
    store = Datastore(tmp_path)
    layout = store.layout(
        "r.zarr",
        dims={"sample": 10},
        chunks={"sample": 4},
        variables={"v": VariableLayout(("sample",))},
    )
    part = xr.Dataset({"v": ("sample", np.ones(3))})
    with pytest.raises(DatastoreError, match="whole chunks"):
        layout.write_region(part, "sample", 2)
    layout.write_region(
        xr.Dataset({"v": ("sample", np.ones(2))}), "sample", 8
    )  # the last, short chunk


def _write_part(root: str, staging: str, start: int, stop: int) -> None:
    from wakefield.datastore import DatasetLayout

    store = Datastore(root)
    layout = DatasetLayout(
        store, "p.zarr", staging, {"sample": 1000, "x": 8, "y": 8}, {"sample": 125}
    )
    ds = _dataset(1000, seed=7).isel(sample=slice(start, stop))
    layout.write_region(ds.drop_vars(["x", "y"]), "sample", start)


def test_parallel_writers_fill_disjoint_chunks(tmp_path: Path) -> None:
    """Four processes writing their own chunk ranges produce exactly the full dataset."""
    store = Datastore(tmp_path)
    full = _dataset(1000, seed=7)
    layout = store.layout(
        "p.zarr",
        dims={"sample": 1000, "x": 8, "y": 8},
        chunks={"sample": 125},
        variables={
            "energy": VariableLayout(("sample",), attrs={"units": "eV"}),
            "image": VariableLayout(("sample", "x", "y"), "float32"),
        },
        coords={"x": full.x, "y": full.y},
    )
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_write_part, args=(str(tmp_path), layout.staging, s, s + 250)
        )
        for s in range(0, 1000, 250)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ref = layout.publish()
    back = store.open_dataset(ref, verify=True).load()
    np.testing.assert_array_equal(back.energy.values, full.energy.values)
    np.testing.assert_array_equal(back.image.values, full.image.values)
    assert back.energy.attrs["units"] == "eV"


def test_artifacts_round_trip_with_metadata(tmp_path: Path) -> None:
    """Artifact files and metadata come back as written, checked by hash."""
    store = Datastore(tmp_path)
    ref = store.write_artifact(
        {"weights.bin": b"\x00\x01", "config.json": b"{}"},
        "models/m",
        meta={"inputs": ["a"]},
    )
    assert ref.kind == "artifact"
    assert store.read_artifact(ref, "weights.bin") == b"\x00\x01"
    assert store.artifact_meta(ref) == {"inputs": ["a"]}


def test_fsspec_memory_root(tmp_path: Path) -> None:
    """A non-local root (fsspec's memory filesystem) stores and reads datasets too."""
    store = Datastore("memory://wakefield-test")
    ref = store.write_dataset(_dataset(20), "datasets/m.zarr")
    back = store.open_dataset(ref, verify=True).load()
    assert back.sizes["sample"] == 20
