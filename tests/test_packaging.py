"""Packaging and project-wide promises."""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path

from pydantic import BaseModel

from wakefield.config import StrictModel
from wakefield.workflow import kind_classes

REPO = Path(__file__).resolve().parents[1]


def test_no_platform_package_shadows_the_standard_library() -> None:
    """platform/__init__.py would shadow Python's own `platform` module."""
    assert not (REPO / "platform" / "__init__.py").exists()


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """Wheels contain every package: the list in pyproject matches the folders."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (
        (REPO / "platform" / "wakefield", "wakefield"),
        (REPO / "services", "wakefield.services"),
    ):
        for init in top.rglob("__init__.py"):
            rel = init.parent.relative_to(top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed


def _models(cls: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if cls in seen:
        return
    seen.add(cls)
    for field in cls.model_fields.values():
        for arg in _walk(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _models(arg, seen)


def _walk(annotation: object) -> list[object]:
    found = [annotation]
    for arg in typing.get_args(annotation):
        found += _walk(arg)
    return found


def test_config_models_are_strict_and_use_strict_booleans() -> None:
    """Every service config derives from StrictModel and no field is a plain bool
    (a plain bool would silently read 'yes' or 'on' as true)."""
    seen: set[type[BaseModel]] = set()
    for cls in kind_classes().values():
        assert issubclass(cls.Config, StrictModel), cls
        _models(cls.Config, seen)
    offenders = [
        f"{m.__name__}.{name}"
        for m in seen
        for name, f in m.model_fields.items()
        if f.annotation is bool
        and not any(getattr(x, "strict", False) for x in f.metadata)
    ]
    assert not offenders, offenders
