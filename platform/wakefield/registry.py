"""Plug-ins found through entry points: service kinds and simulators.

Entry points are listed by name without importing them; a plug-in's code is
imported only when a workflow names it.  A workflow may also name a class
directly as ``package.module:Class``; such code runs only because the
workflow asked for it explicitly.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import RegistryError

log = logging.getLogger(__name__)

SERVICE_GROUP = "wakefield.services"
SIMULATOR_GROUP = "wakefield.simulators"


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RegistryError(
                f"two plug-ins in {group!r} are named {ep.name!r}: "
                f"{found[ep.name].value} and {ep.value}"
            )
        found[ep.name] = ep
    return found


def names(group: str) -> list[str]:
    """The registered plug-in names of a group, sorted."""
    return sorted(_entry_points(group))


def load(group: str, name: str) -> Any:
    """The class registered as ``name`` in ``group``, or named as ``module:Class``."""
    if ":" in name:
        return _import_explicit(name)
    registered = _entry_points(group)
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise RegistryError(
            f"no plug-in named {name!r} in {group!r}; registered: {known}"
        )
    try:
        return registered[name].load()
    except ImportError as exc:
        raise RegistryError(
            f"plug-in {name!r} ({registered[name].value}) cannot be imported: {exc}. "
            "It may need an optional extra, for example `pip install wakefield[linac]`."
        ) from exc


def _import_explicit(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(
            f"cannot import {module_name!r} for {target!r}: {exc}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise RegistryError(f"{module_name!r} has no attribute {attr!r}") from exc


def service_kinds() -> list[str]:
    return names(SERVICE_GROUP)


def simulators() -> list[str]:
    return names(SIMULATOR_GROUP)


def load_service_kind(name: str) -> Any:
    return load(SERVICE_GROUP, name)


def load_simulator(name: str) -> Any:
    return load(SIMULATOR_GROUP, name)
