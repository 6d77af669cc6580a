"""JSON Schemas in schemas/: current with the models, and usable by editors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from wakefield import schemas
from wakefield.loader import parse_yaml
from wakefield.workflow import kind_classes

REPO = Path(__file__).resolve().parents[1]


def test_schemas_in_the_repository_are_current() -> None:
    """`wakefield schemas --out schemas` has been run after the last model change."""
    stale = schemas.stale(REPO / "schemas")
    assert not stale, f"out of date: {stale}; run `make schemas`"


def test_every_registered_kind_has_a_schema() -> None:
    """Each service kind found through entry points gets its own config schema."""
    files = schemas.generate()
    for kind in kind_classes():
        assert f"services/{kind}.schema.json" in files


@pytest.mark.parametrize(
    "path", sorted((REPO / "workflows").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_workflows_validate_against_the_json_schema(path: Path) -> None:
    """What an editor checks with workflow.schema.json agrees with wakefield's loader."""
    schema = json.loads((REPO / "schemas" / "workflow.schema.json").read_text())
    data, _ = parse_yaml(path.read_text(), str(path))
    jsonschema.validate(data, schema)


def test_json_schema_rejects_an_unknown_field() -> None:
    """The editor schema forbids unknown keys, as the loader does."""
    schema = json.loads((REPO / "schemas" / "workflow.schema.json").read_text())
    bad = {
        "apiVersion": "wakefield/v1",
        "kind": "Workflow",
        "metadata": {"name": "x"},
        "spec": {
            "services": [
                {
                    "name": "a",
                    "uses": "relay",
                    "subscribe": {"in": "t"},
                    "config": {"wrok": 1},
                }
            ]
        },
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
