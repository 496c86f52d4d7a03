"""The recipe JSON Schema that editors use: it accepts the shipped recipes and rejects typos."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from .conftest import run_cli

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def as_editor_sees(node: Any) -> Any:
    """YAML 1.2 editors read an unquoted 2025-01-01 as a string; mirror that."""
    if isinstance(node, dict):
        return {str(key): as_editor_sees(value) for key, value in node.items()}
    if isinstance(node, list):
        return [as_editor_sees(item) for item in node]
    if isinstance(node, dt.date):
        return node.isoformat()
    return node


def printed_schema() -> dict[str, Any]:
    outcome = run_cli("schema")
    assert outcome.exit_code == 0
    return json.loads(outcome.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_schema_accepts_recipe(path: Path) -> None:
    recipe = as_editor_sees(YAML(typ="safe").load(path.read_text()))

    jsonschema.Draft202012Validator(printed_schema()).validate(recipe)


def test_schema_rejects_unknown_key() -> None:
    recipe = as_editor_sees(YAML(typ="safe").load(RECIPES[0].read_text()))
    recipe["streams"]["projects"]["parms"] = {}

    errors = list(jsonschema.Draft202012Validator(printed_schema()).iter_errors(recipe))

    assert [e.message for e in errors] == [
        "Additional properties are not allowed ('parms' was unexpected)"
    ]


def test_schema_is_valid_draft() -> None:
    jsonschema.Draft202012Validator.check_schema(printed_schema())
