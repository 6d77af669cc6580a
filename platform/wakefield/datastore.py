"""The datastore: xarray Datasets in Zarr stores, and artifacts, under one root.

The root is a local folder or an fsspec URL (``s3://bucket/prefix``).  Every
reference is a path relative to the root; one that would lead outside it
(``..``, an absolute path, another scheme) is refused.

A dataset is published once it is complete and never changed after: it is
written under a temporary name, its content hash is computed over every
file, the folder is moved into place, and a manifest beside it
(``<uri>.wakefield.json``, holding the hash) is written last.  Readers
require the manifest, and can check the hash.

For parallel writers, :meth:`Datastore.layout` creates a store's arrays
first (through zarr, without dask); each writer then fills a disjoint range
of whole chunks along one dimension with :meth:`DatasetLayout.write_region`,
and one process calls :meth:`DatasetLayout.publish`.  Appending to one
store from several processes at once corrupts it, so wakefield never does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr

from .errors import DataRefError, DatastoreError, IntegrityError
from .events import DataRef

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".wakefield.json"
_PARTIAL = ".partial-"


class Datastore:
    """Datasets and artifacts under one root URI."""

    def __init__(self, root: str | Path) -> None:
        root = str(root)
        self.fs, path = fsspec.core.url_to_fs(root)
        self.local = (
            self.fs.protocol in ("file", ("file", "local"))
            or "file" in self.fs.protocol
        )
        self.root = str(Path(path).resolve()) if self.local else path.rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.url = self.root if self.local else f"{_protocol(self.fs)}://{self.root}"

    def __repr__(self) -> str:
        return f"Datastore({self.url!r})"

    # References

    def resolve(self, uri: str) -> str:
        """The full path of a reference, refusing any that leaves the root."""
        if (
            not uri
            or "://" in uri
            or uri.startswith(("/", "\\"))
            or ":" in uri.split("/")[0]
        ):
            raise DataRefError(
                f"data reference {uri!r} must be a relative path inside the datastore "
                f"root {self.url} (no scheme, no leading /)"
            )
        clean = posixpath.normpath(uri)
        if clean == ".." or clean.startswith("../") or clean == ".":
            raise DataRefError(
                f"data reference {uri!r} points outside the datastore root {self.url}"
            )
        return f"{self.root}/{clean}"

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self.resolve(uri) + MANIFEST_SUFFIX))

    # Whole datasets

    def write_dataset(
        self, ds: xr.Dataset, uri: str, *, chunks: Mapping[str, int] | None = None
    ) -> DataRef:
        """Write ``ds`` completely, then publish it at ``uri``.

        If a complete dataset is already there (a handler that runs again
        after a crash), it is kept and its reference returned, so a retried
        write never changes published data.
        """
        final = self.resolve(uri)
        if self.exists(uri):
            log.info("dataset %s already published; keeping it", uri)
            return self.ref(uri)
        staging = f"{final}{_PARTIAL}{uuid.uuid4().hex[:8]}"
        encoding = _encoding(ds, chunks)
        try:
            ds.to_zarr(
                self._store(staging),
                mode="w",
                encoding=encoding,
                consolidated=False,
                zarr_format=3,
            )
        except Exception as exc:
            self._remove(staging)
            raise DatastoreError(f"writing dataset {uri} failed: {exc}") from exc
        return self._publish(staging, final, uri, kind="dataset")

    def open_dataset(self, ref: DataRef | str, *, verify: bool = False) -> xr.Dataset:
        """Open a published dataset; ``verify`` recomputes its content hash."""
        uri = ref.uri if isinstance(ref, DataRef) else ref
        path = self.resolve(uri)
        manifest = self._manifest(uri)
        if isinstance(ref, DataRef) and ref.hash != manifest["hash"]:
            raise IntegrityError(
                f"dataset {uri} has hash {manifest['hash']}, the reference expects {ref.hash}"
            )
        if verify:
            actual = self._hash(path)
            if actual != manifest["hash"]:
                raise IntegrityError(
                    f"dataset {uri} was changed after it was published: {actual}"
                )
        try:
            ds: xr.Dataset = xr.open_zarr(
                self._store(path), consolidated=False, zarr_format=3
            )
            return ds
        except Exception as exc:
            raise DatastoreError(f"opening dataset {uri} failed: {exc}") from exc

    def ref(self, uri: str) -> DataRef:
        """The reference of a published dataset or artifact."""
        manifest = self._manifest(uri)
        return DataRef(
            uri=uri, hash=manifest["hash"], kind=manifest.get("kind", "dataset")
        )

    # Parallel writes into a store laid out first

    def layout(
        self,
        uri: str,
        *,
        dims: Mapping[str, int],
        variables: Mapping[str, VariableLayout],
        coords: Mapping[str, xr.DataArray] | None = None,
        chunks: Mapping[str, int],
        attrs: Mapping[str, Any] | None = None,
    ) -> DatasetLayout:
        """Create the arrays of a dataset to be filled by parallel writers."""
        final = self.resolve(uri)
        staging = f"{final}{_PARTIAL}{uuid.uuid4().hex[:8]}"
        group = zarr.open_group(self._store(staging), mode="w", zarr_format=3)
        group.attrs.update(_jsonable(dict(attrs or {})))
        for name, var in variables.items():
            shape = tuple(dims[d] for d in var.dims)
            chunk = tuple(min(chunks.get(d, dims[d]), dims[d]) or 1 for d in var.dims)
            array = group.create_array(
                name,
                shape=shape,
                chunks=chunk,
                dtype=var.dtype,
                fill_value=var.fill_value,
                dimension_names=var.dims,
            )
            array.attrs.update(_jsonable(dict(var.attrs or {})))
        for name, coord in (coords or {}).items():
            array = group.create_array(
                name,
                shape=coord.shape,
                chunks=coord.shape or (1,),
                dtype=coord.dtype,
                dimension_names=[str(d) for d in coord.dims],
            )
            array[...] = coord.values
            array.attrs.update(_jsonable(dict(coord.attrs)))
        return DatasetLayout(self, uri, staging, dict(dims), dict(chunks))

    # Artifacts (model weights and their metadata)

    def write_artifact(
        self,
        files: Mapping[str, bytes],
        uri: str,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> DataRef:
        """Publish a folder of files (weights as safetensors-like bytes, JSON)."""
        final = self.resolve(uri)
        if self.exists(uri):
            log.info("artifact %s already published; keeping it", uri)
            return self.ref(uri)
        staging = f"{final}{_PARTIAL}{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(staging, exist_ok=True)
        for name, data in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise DataRefError(f"artifact file name {name!r} is not allowed")
            with self.fs.open(f"{staging}/{name}", "wb") as fh:
                fh.write(data)
        return self._publish(staging, final, uri, kind="artifact", meta=meta)

    def read_artifact(self, ref: DataRef | str, name: str) -> bytes:
        """One file of a published artifact, after checking the reference's hash."""
        uri = ref.uri if isinstance(ref, DataRef) else ref
        manifest = self._manifest(uri)
        if isinstance(ref, DataRef) and ref.hash != manifest["hash"]:
            raise IntegrityError(
                f"artifact {uri} has hash {manifest['hash']}, expected {ref.hash}"
            )
        with self.fs.open(f"{self.resolve(uri)}/{name}", "rb") as fh:
            return bytes(fh.read())

    def artifact_meta(self, ref: DataRef | str) -> dict[str, Any]:
        uri = ref.uri if isinstance(ref, DataRef) else ref
        return dict(self._manifest(uri).get("meta", {}))

    def write_file(self, data: bytes, uri: str) -> str:
        """Write a plain file such as a plot (not hashed, may be replaced)."""
        path = self.resolve(uri)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "wb") as fh:
            fh.write(data)
        return path

    def local_path(self, uri: str) -> Path:
        """A local path for ``uri`` (local roots only), e.g. to save a plot."""
        if not self.local:
            raise DatastoreError(f"{self.url} is not a local folder")
        path = Path(self.resolve(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # Internals

    def _store(self, path: str) -> Any:
        if self.local:
            return path
        fs = self.fs
        if not getattr(
            fs, "async_impl", False
        ):  # zarr talks to filesystems asynchronously
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return zarr.storage.FsspecStore(fs, path=path)

    def _manifest(self, uri: str) -> dict[str, Any]:
        path = self.resolve(uri) + MANIFEST_SUFFIX
        try:
            with self.fs.open(path, "rb") as fh:
                return dict(json.loads(fh.read()))
        except FileNotFoundError as exc:
            raise DatastoreError(
                f"no published dataset or artifact at {uri} in {self.url} "
                "(it does not exist, or its writer has not finished)"
            ) from exc

    def _hash(self, path: str) -> str:
        digest = hashlib.sha256()
        for file in sorted(self.fs.find(path)):
            rel = posixpath.relpath(file, path)
            digest.update(rel.encode() + b"\0")
            with self.fs.open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return "sha256:" + digest.hexdigest()

    def _publish(
        self,
        staging: str,
        final: str,
        uri: str,
        *,
        kind: str,
        meta: Mapping[str, Any] | None = None,
    ) -> DataRef:
        content = self._hash(staging)
        manifest = {
            "hash": content,
            "kind": kind,
            "uri": uri,
            "meta": _jsonable(dict(meta or {})),
        }
        if self.local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            if Path(
                final
            ).exists():  # left by an attempt that crashed before its manifest
                shutil.rmtree(final)
            Path(staging).rename(final)
        else:
            self._remove(final)
            self.fs.mv(staging, final, recursive=True)
        # The manifest comes last: until it exists, nothing is published.
        with self.fs.open(final + MANIFEST_SUFFIX, "wb") as fh:
            fh.write(json.dumps(manifest, indent=1).encode())
        log.info("published %s %s (%s)", kind, uri, content[:19])
        return DataRef.model_validate({"uri": uri, "hash": content, "kind": kind})

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class VariableLayout:
    """Shape and metadata of one array in a dataset laid out in advance."""

    dims: tuple[str, ...]
    dtype: str = "float64"
    fill_value: Any = None
    attrs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.fill_value is None:
            kind = np.dtype(self.dtype).kind
            object.__setattr__(self, "fill_value", np.nan if kind == "f" else 0)
        if self.attrs is None:
            object.__setattr__(self, "attrs", {})


class DatasetLayout:
    """A dataset laid out but not yet published; filled region by region."""

    def __init__(
        self,
        store: Datastore,
        uri: str,
        staging: str,
        dims: dict[str, int],
        chunks: dict[str, int],
    ) -> None:
        self.store = store
        self.uri = uri
        self.staging = staging
        self.dims = dims
        self.chunks = chunks

    def write_region(self, ds: xr.Dataset, dim: str, start: int) -> None:
        """Write ``ds`` (which spans ``dim`` from ``start``) into whole chunks.

        Raises :class:`DatastoreError` if the region does not begin and end on
        chunk boundaries, because writers sharing a chunk lose rows silently.
        """
        size = ds.sizes[dim]
        stop = start + size
        chunk = self.chunks.get(dim, self.dims[dim])
        if start % chunk or (stop % chunk and stop != self.dims[dim]):
            raise DatastoreError(
                f"region {dim}[{start}:{stop}] of {self.uri} does not cover whole chunks "
                f"of {chunk}; parallel writers must own whole chunks"
            )
        region_vars = [v for v in ds.data_vars if dim in ds[v].dims]
        body = ds[region_vars].drop_vars(
            [c for c in ds.coords if dim not in ds[c].dims]
        )
        for var in body.variables.values():
            var.attrs = {}
            var.encoding = {}
        try:
            body.to_zarr(
                self.store._store(self.staging),
                region={dim: slice(start, stop)},
                consolidated=False,
                zarr_format=3,
            )
        except Exception as exc:
            raise DatastoreError(
                f"writing {dim}[{start}:{stop}] of {self.uri} failed: {exc}"
            ) from exc

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        group = zarr.open_group(
            self.store._store(self.staging), mode="r+", zarr_format=3
        )
        group.attrs.update(_jsonable(dict(attrs)))

    def publish(self) -> DataRef:
        """Hash, write the manifest, and move the dataset into place."""
        return self.store._publish(
            self.staging, self.store.resolve(self.uri), self.uri, kind="dataset"
        )

    def discard(self) -> None:
        self.store._remove(self.staging)


def _encoding(
    ds: xr.Dataset, chunks: Mapping[str, int] | None
) -> dict[str, dict[str, Any]]:
    if not chunks:
        return {}
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        if var.ndim:
            encoding[str(name)] = {
                "chunks": tuple(
                    min(chunks.get(str(d), n), n) or 1 for d, n in var.sizes.items()
                )
            }
    return encoding


def _jsonable(value: Any) -> Any:
    """Attributes made JSON-safe (numpy scalars and arrays become lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, tuple) else str(proto)
