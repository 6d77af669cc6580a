"""Loading workflow YAML with errors that say where and what.

The file is read as YAML 1.2 (through ruamel.yaml), so the YAML 1.1 traps
never change a value silently: a bare ``no``, ``off`` or ``yes`` stays a
string (and is refused, with a hint, where a boolean is expected), and
``1e-3`` or ``1.0E6`` are numbers.  Duplicate keys are errors, and so is a
tab in indentation.  Every error names the file, line and column, the
dotted path of the field, the value found and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MantissaNoDotYAML1_1Warning, MarkedYAMLError

from .errors import Problem, RegistryError, WorkflowError
from .workflow import (
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    WorkflowBase,
    check_wiring,
    kind_classes,
    workflow_model,
)

Loc = tuple[str | int, ...]
Positions = dict[Loc, tuple[int, int]]

# apiVersion -> a function that turns a document of that version into the
# next one.  Empty while wakefield/v1 is the only version.
MIGRATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_TAG_WORDS = {"uses": "service kind", "backend": "bus backend", "op": "step"}


def load_workflow(path: str | Path) -> WorkflowBase:
    """Read, migrate and validate a workflow file; raises :class:`WorkflowError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(
            [Problem(f"cannot read the file: {exc.strerror}", file=str(path))]
        ) from exc
    return loads_workflow(text, filename=str(path))


def loads_workflow(text: str, *, filename: str = "<workflow>") -> WorkflowBase:
    """Validate workflow YAML given as text."""
    data, positions = parse_yaml(text, filename)
    if not isinstance(data, dict):
        raise WorkflowError(
            [
                Problem(
                    "a workflow is a YAML mapping (apiVersion, kind, metadata, spec)",
                    file=filename,
                    line=1,
                    column=1,
                )
            ]
        )
    data = _migrate(data, filename, positions)
    uses = _explicit_kinds(data)
    try:
        kinds = kind_classes(uses)
        model = workflow_model(uses)
    except RegistryError as exc:
        raise WorkflowError([Problem(str(exc), file=filename)]) from exc
    try:
        workflow = model.model_validate(data)
    except ValidationError as exc:
        problems = [
            _problem(err, data, positions, filename, model) for err in exc.errors()
        ]
        raise WorkflowError(problems) from None
    wiring = check_wiring(workflow, kinds)
    if wiring:
        raise WorkflowError([_locate(p, positions, filename) for p in wiring])
    return workflow


def parse_yaml(text: str, filename: str) -> tuple[Any, Positions]:
    """Plain data and the (line, column) of every key and item, 1-based."""
    tab = _tab_in_indentation(text)
    if tab is not None:
        raise WorkflowError(
            [
                Problem(
                    "a tab in indentation; YAML indents with spaces only, so replace the tab "
                    "with spaces",
                    file=filename,
                    line=tab[0],
                    column=tab[1],
                )
            ]
        )
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():
            # In a file declared YAML 1.1, 1e-3 is still read as the number it
            # looks like; ruamel's advice to add a dot is noise here.
            warnings.simplefilter("ignore", MantissaNoDotYAML1_1Warning)
            node = yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key = re.search(r'duplicate key "([^"]*)"', str(exc.problem))
        name = key.group(1) if key else "?"
        raise WorkflowError(
            [
                Problem(
                    f"duplicate key {name!r}; each key may appear once in a mapping",
                    file=filename,
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ]
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise WorkflowError(
            [
                Problem(
                    f"not valid YAML: {exc.problem or exc.context}",
                    file=filename,
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ]
        ) from None
    positions: Positions = {}
    return _plain(node, (), positions), positions


def _tab_in_indentation(text: str) -> tuple[int, int] | None:
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip() and not line.lstrip().startswith("#"):
            return number, indent.index("\t") + 1
    return None


def _plain(node: Any, loc: Loc, positions: Positions) -> Any:
    """ruamel's nodes as plain Python values, recording positions."""
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            line, col = node.lc.key(key) if key in node.lc.data else node.lc.value(key)
            positions[(*loc, str(key))] = (line + 1, col + 1)
            out[str(key) if not isinstance(key, str) else key] = _plain(
                value, (*loc, str(key)), positions
            )
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            line, col = node.lc.item(i)
            positions[(*loc, i)] = (line + 1, col + 1)
            out_list.append(_plain(value, (*loc, i), positions))
        return out_list
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _migrate(
    data: dict[str, Any], filename: str, positions: Positions
) -> dict[str, Any]:
    version = data.get("apiVersion")
    while version in MIGRATIONS:
        data = MIGRATIONS[version](data)
        version = data.get("apiVersion")
    if version not in SUPPORTED_API_VERSIONS:
        line, col = positions.get(("apiVersion",), (1, 1))
        raise WorkflowError(
            [
                Problem(
                    "unknown workflow version"
                    if version is not None
                    else "apiVersion is missing",
                    "apiVersion",
                    file=filename,
                    line=line,
                    column=col,
                    value=version,
                    allowed=", ".join(SUPPORTED_API_VERSIONS),
                )
            ]
        )
    return data


def _explicit_kinds(data: dict[str, Any]) -> tuple[str, ...]:
    """Kinds a workflow names as ``module:Class`` (loaded only because it asks)."""
    services = (
        (data.get("spec") or {}).get("services")
        if isinstance(data.get("spec"), dict)
        else None
    )
    names = []
    for svc in services if isinstance(services, list) else []:
        uses = svc.get("uses") if isinstance(svc, dict) else None
        if isinstance(uses, str) and ":" in uses:
            names.append(uses)
    return tuple(sorted(set(names)))


def _problem(
    err: Any, data: Any, positions: Positions, filename: str, model: type[BaseModel]
) -> Problem:
    loc = _data_loc(err["loc"], data)
    kind = err["type"]
    value = err.get("input")
    message = err["msg"]
    allowed = None
    if kind == "extra_forbidden":
        names = _field_names(model, err["loc"])
        message = f"unknown field {loc[-1]!r}"
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        allowed = ", ".join(names) if names else None
        value = None
    elif kind == "missing":
        message = "this field is required"
        value = None
    elif kind in ("bool_type", "bool_parsing") and isinstance(value, str):
        message = (
            "expected a boolean; YAML 1.2 reads a bare yes/no/on/off as a string, "
            "so write true or false"
        )
    elif kind == "string_type" and isinstance(value, bool):
        message += (
            "; YAML 1.1 files read yes/no/on/off as booleans: quote the value "
            "to keep it a string"
        )
    elif kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected")
        message = "not one of the allowed values"
    elif kind == "union_tag_invalid":
        allowed = err.get("ctx", {}).get("expected_tags")
        discriminator = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
        word = _TAG_WORDS.get(discriminator, discriminator or "variant")
        message = f"unknown {word} {err.get('ctx', {}).get('tag')!r}"
        value = None
        if discriminator:
            loc = (*loc, discriminator)
    if isinstance(value, dict | list):
        value = None  # the located line says more than a dump would
    return _locate(
        Problem(message, _dotted(loc), value=value, allowed=allowed),
        positions,
        filename,
        loc,
    )


def _data_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """A pydantic error location without the union tags pydantic adds."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if (
            isinstance(node, dict)
            and isinstance(part, str)
            and part not in node
            and (part in {v for v in node.values() if isinstance(v, str)})
        ):
            continue  # a union's discriminator tag, not a key of the document
        if isinstance(node, dict | list) and _has(node, part):
            node = node[part]
        else:
            node = None
        out.append(part)
    return tuple(out)


def _has(node: dict[Any, Any] | list[Any], part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += (
            f"[{part}]"
            if isinstance(part, int)
            else (f".{part}" if text else str(part))
        )
    return text


def _locate(
    problem: Problem, positions: Positions, filename: str, loc: Loc | None = None
) -> Problem:
    """``problem`` with the file and the line of its field (or the nearest parent)."""
    if loc is None:
        loc = tuple(
            int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", problem.path)
        )
    while loc and loc not in positions:
        loc = loc[:-1]
    line, column = positions.get(loc, (None, None))
    return Problem(
        problem.message,
        problem.path,
        filename,
        line,
        column,
        problem.value,
        problem.allowed,
    )


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The fields allowed where ``loc`` (without its last part) points."""
    current: Any = model
    for part in loc[:-1]:
        current = _step(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(f.alias or name for name, f in current.model_fields.items())
    return []


def _step(current: Any, part: Any) -> Any:
    import typing

    if isinstance(current, type) and issubclass(current, BaseModel):
        if isinstance(part, str) and part in current.model_fields:
            return current.model_fields[part].annotation
        return None
    origin = typing.get_origin(current)
    args = typing.get_args(current)
    if origin in (list, tuple) and isinstance(part, int):
        return args[0] if args else None
    if origin is dict and isinstance(part, str):
        return args[1] if len(args) == 2 else None
    if origin is typing.Annotated:
        return _step(args[0], part)
    if args:  # a union: the variant whose discriminator value is ``part``
        for arg in args:
            inner = (
                typing.get_args(arg)[0]
                if typing.get_origin(arg) is typing.Annotated
                else arg
            )
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                for field in inner.model_fields.values():
                    if typing.get_origin(
                        field.annotation
                    ) is typing.Literal and part in typing.get_args(field.annotation):
                        return inner
        for arg in args:
            found = _step(arg, part)
            if found is not None:
                return found
    return None


__all__ = ["API_VERSION", "MIGRATIONS", "load_workflow", "loads_workflow", "parse_yaml"]
