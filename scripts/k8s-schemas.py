#!/usr/bin/env python3
"""Strict JSON Schemas for kubeconform, from Kubernetes' own OpenAPI documents.

Two sources, one conversion:

``builtin``
    The OpenAPI v3 documents of the Kubernetes API server
    (``api/openapi-spec/v3/*.json`` in the ``k8s.io/kubernetes`` module):
    one schema per built-in kind, written as ``<kind>-<group>-<version>.json``
    the way kubeconform names them (``configmap-v1.json``,
    ``ingress-networking-v1.json``).

``crd``
    CustomResourceDefinition YAML files (KubeRay's, Strimzi's): one schema
    per kind and served version, written as ``<group>/<kind>_<version>.json``.

Every schema is standalone (the definitions it refers to are copied into it)
and strict: an object that lists its properties allows no others, unless the
API marks it ``x-kubernetes-preserve-unknown-fields``. ``apiVersion`` and
``kind`` must be the schema's own. Rules that only the API server can check
(CEL ``x-kubernetes-validations``, formats such as ``byte``) are left out;
``int32`` and ``int64`` become numeric bounds.

Usage::

    k8s-schemas.py builtin --spec-dir DIR --out DIR
    k8s-schemas.py crd --out DIR [--object-meta SPEC_DIR] CRD.yaml...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

DRAFT = "http://json-schema.org/draft-07/schema#"
REF_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# Keys that carry no constraint a client-side check can apply.
DROPPED_KEYS = {"description", "default", "example", "externalDocs", "format"}

INTEGER_BOUNDS = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

Schema = dict[str, Any]

log = logging.getLogger("k8s-schemas")

# libyaml's loader when PyYAML has it: the Strimzi CRDs are megabytes.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConversionError(Exception):
    """A document that cannot be turned into schemas, with the reason."""


def convert_node(node: Any, refs: set[str]) -> Any:
    """One OpenAPI schema node as strict JSON Schema; collects the $refs met."""
    if isinstance(node, list):
        return [convert_node(item, refs) for item in node]
    if not isinstance(node, dict):
        return node

    out: Schema = {}
    for key, value in node.items():
        if key in DROPPED_KEYS or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: convert_node(sub, refs) for name, sub in value.items()}
        elif key == "$ref":
            name = value.removeprefix(REF_PREFIX)
            refs.add(name)
            out[key] = f"#/definitions/{name}"
        else:
            out[key] = convert_node(value, refs)

    # Draft 7 ignores the neighbours of a $ref: keep them by wrapping it.
    if "$ref" in out and len(out) > 1:
        out["allOf"] = [*out.get("allOf", []), {"$ref": out.pop("$ref")}]

    bounds = INTEGER_BOUNDS.get(node.get("format", ""))
    if bounds and out.get("type") == "integer":
        out.setdefault("minimum", bounds[0])
        out.setdefault("maximum", bounds[1])

    if node.get("x-kubernetes-int-or-string") and not _has_type(out):
        out["type"] = ["integer", "string"]

    if node.get("nullable") is True:
        out.pop("nullable", None)
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]

    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    return out


def _has_type(schema: Schema) -> bool:
    return any(key in schema for key in ("type", "anyOf", "oneOf", "allOf"))


def standalone(
    root: Schema,
    definitions: dict[str, Schema],
    *,
    api_version: str,
    kind: str,
) -> Schema:
    """The root schema with every definition it reaches copied in."""
    refs: set[str] = set()
    schema = convert_node(root, refs)

    # Follow references breadth-first until no new definition turns up.
    converted: dict[str, Any] = {}
    pending = set(refs)
    while pending:
        name = pending.pop()
        if name not in definitions:
            raise ConversionError(f"{kind}: reference to unknown definition {name!r}")
        found: set[str] = set()
        converted[name] = convert_node(definitions[name], found)
        pending |= found - converted.keys()

    schema.setdefault("type", "object")
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "enum": [api_version]}
    properties["kind"] = {"type": "string", "enum": [kind]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    if converted:
        schema["definitions"] = dict(sorted(converted.items()))
    return {"$schema": DRAFT, **schema}


def kubeconform_suffix(api_version: str) -> str:
    """kubeconform's ``KindSuffix``: ``-v1``, ``-apps-v1``, ``-networking-v1``."""
    group, _, version = api_version.rpartition("/")
    if not group:
        return f"-{version.lower()}"
    return f"-{group.split('.')[0].lower()}-{version.lower()}"


def read_openapi(spec_dir: Path) -> dict[str, Schema]:
    """Every schema of every OpenAPI v3 document in the folder, by name."""
    documents = sorted(spec_dir.glob("*_openapi.json"))
    if not documents:
        raise ConversionError(
            f"no *_openapi.json files in {spec_dir}; expected the folder "
            "api/openapi-spec/v3 of the k8s.io/kubernetes module"
        )
    schemas: dict[str, Schema] = {}
    for path in documents:
        document = json.loads(path.read_text())
        schemas.update(document.get("components", {}).get("schemas", {}))
    return schemas


def builtin_kinds(schemas: dict[str, Schema]) -> Iterator[tuple[str, str, Schema]]:
    """(apiVersion, kind, schema) of each built-in kind, lists left out."""
    for name, schema in sorted(schemas.items()):
        if name.startswith("io.k8s.apimachinery."):
            continue  # meta types (Status, DeleteOptions) claim every group
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            kind = gvk["kind"]
            if kind.endswith("List"):
                continue
            group, version = gvk["group"], gvk["version"]
            api_version = f"{group}/{version}" if group else version
            yield api_version, kind, schema


def write_builtin(spec_dir: Path, out: Path) -> int:
    """Writes one schema per built-in kind; returns how many."""
    schemas = read_openapi(spec_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for api_version, kind, root in builtin_kinds(schemas):
        schema = standalone(root, schemas, api_version=api_version, kind=kind)
        name = f"{kind.lower()}{kubeconform_suffix(api_version)}.json"
        _write(out / name, schema)
        count += 1
    return count


def crd_versions(document: Schema, source: Path) -> Iterator[tuple[str, str, Schema]]:
    """(apiVersion, kind, openAPIV3Schema) of each served version of a CRD."""
    if document.get("kind") != "CustomResourceDefinition":
        raise ConversionError(
            f"{source}: kind is {document.get('kind')!r}, "
            "expected CustomResourceDefinition"
        )
    spec = document["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = version.get("schema", {}).get("openAPIV3Schema")
        if schema is None:
            raise ConversionError(
                f"{source}: {kind} {version['name']} has no openAPIV3Schema"
            )
        yield f"{group}/{version['name']}", kind, schema


def write_crds(paths: Iterable[Path], out: Path, object_meta: Schema | None) -> int:
    """Writes one schema per kind and served version; returns how many.

    A custom resource's own ``metadata`` is only ``type: object`` in its CRD;
    with ``object_meta`` given it is checked as the ObjectMeta it really is.
    """
    count = 0
    for path in paths:
        for document in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not document:
                continue
            for api_version, kind, root in crd_versions(document, path):
                root = dict(root)
                definitions: dict[str, Schema] = {}
                if object_meta is not None:
                    root["properties"] = {
                        **root.get("properties", {}),
                        "metadata": {"$ref": REF_PREFIX + OBJECT_META},
                    }
                    definitions[OBJECT_META] = object_meta
                schema = standalone(
                    root, definitions, api_version=api_version, kind=kind
                )
                group, version = api_version.split("/")
                _write(out / group / f"{kind.lower()}_{version}.json", schema)
                count += 1
    return count


def _write(path: Path, schema: Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True))


def object_meta_from(spec_dir: Path) -> Schema:
    """ObjectMeta from the OpenAPI documents, with the types it refers to inlined."""
    schemas = read_openapi(spec_dir)
    return _inline(schemas[OBJECT_META], schemas)


def _inline(node: Any, schemas: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_inline(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        # ObjectMeta's references (ManagedFieldsEntry, OwnerReference, Time)
        # are not recursive, so copying them in terminates.
        target = node["$ref"].removeprefix(REF_PREFIX)
        return _inline(schemas[target], schemas)
    return {key: _inline(value, schemas) for key, value in node.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)

    builtin = sub.add_parser("builtin", help="built-in kinds from OpenAPI v3")
    builtin.add_argument("--spec-dir", type=Path, required=True)
    builtin.add_argument("--out", type=Path, required=True)

    crd = sub.add_parser("crd", help="custom resources from CRD files")
    crd.add_argument("--out", type=Path, required=True)
    crd.add_argument(
        "--object-meta",
        type=Path,
        metavar="SPEC_DIR",
        help="check custom resources' metadata against ObjectMeta from here",
    )
    crd.add_argument("crds", type=Path, nargs="+")

    args = parser.parse_args(argv)
    logging.basicConfig(format="k8s-schemas: %(message)s", level=logging.INFO)
    try:
        if args.source == "builtin":
            count = write_builtin(args.spec_dir, args.out)
        else:
            meta = object_meta_from(args.object_meta) if args.object_meta else None
            count = write_crds(args.crds, args.out, meta)
    except (ConversionError, OSError, KeyError, yaml.YAMLError) as err:
        log.error("%s", err)
        return 1

    if count == 0:
        log.error("no kinds found for %s", args.source)
        return 1
    log.info("wrote %d schemas under %s", count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
