"""JSON Schemas generated from the pydantic models.

``wakefield schemas --out schemas/`` writes:

- ``workflow.schema.json``: the whole workflow document, every registered
  service kind's config included (editors validate YAML with it);
- ``event.schema.json``: the event envelope;
- ``services/<kind>.schema.json``: one per registered service kind's config.

A test regenerates them and fails if the files in the repository differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .events import Event
from .workflow import kind_classes, workflow_model

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate() -> dict[str, dict[str, Any]]:
    """Relative file name -> schema."""
    workflow = workflow_model().model_json_schema()
    workflow = {"$schema": SCHEMA_DIALECT, "title": "wakefield workflow", **workflow}
    files = {
        "workflow.schema.json": workflow,
        "event.schema.json": {"$schema": SCHEMA_DIALECT, **Event.model_json_schema()},
    }
    for name, cls in sorted(kind_classes().items()):
        schema = cls.Config.model_json_schema()
        schema = {
            "$schema": SCHEMA_DIALECT,
            "title": f"{name} service config",
            "description": cls.summary or (cls.__doc__ or "").strip(),
            **schema,
        }
        files[f"services/{name}.schema.json"] = schema
    return files


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(out: Path) -> list[Path]:
    """Write every schema under ``out``; returns the files written."""
    written = []
    for rel, schema in generate().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def stale(out: Path) -> list[str]:
    """Files under ``out`` that differ from what :func:`generate` gives."""
    expected = {rel: render(schema) for rel, schema in generate().items()}
    differ = [
        rel
        for rel, text in expected.items()
        if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text
    ]
    present = {str(p.relative_to(out)) for p in out.rglob("*.schema.json")}
    differ += sorted(present - set(expected))
    return sorted(differ)
