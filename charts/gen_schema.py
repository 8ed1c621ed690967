"""Generate ``putplace/values.schema.json`` from ``putplace/values.yaml``.

Types come from the default values, descriptions from the ``# --`` comment above each key.
Every object with keys lists them as its properties and refuses others (a typo fails at
install); an object left empty by default (``nodeSelector: {}``, ``instance.spec``) is free-form.

    .venv/bin/python charts/gen_schema.py           # rewrite the schema
    .venv/bin/python charts/gen_schema.py --check   # exit 1 if it is stale (the tests run this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

CHART = Path(__file__).resolve().parent / "putplace"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):")


def descriptions(text: str) -> dict[tuple[str, ...], str]:
    """Path of each key -> the ``# --`` comment block right above it."""
    found: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
        elif stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
        elif (match := _KEY.match(line)) is not None:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            if comment:
                found[tuple(key for _, key in stack)] = " ".join(comment)
            comment = []
        elif not stripped:
            comment = []
    return found


def schema_of(value: Any, path: tuple[str, ...], notes: dict[tuple[str, ...], str]) -> dict[str, Any]:
    node: dict[str, Any]
    if isinstance(value, dict):
        node = {"type": "object"}
        if value:
            node["properties"] = {k: schema_of(v, (*path, k), notes) for k, v in value.items()}
            node["additionalProperties"] = False
    elif isinstance(value, list):
        node = {"type": "array"}
    elif isinstance(value, bool):
        node = {"type": "boolean"}
    elif isinstance(value, int):
        node = {"type": "integer"}
    elif isinstance(value, float):
        node = {"type": "number"}
    else:
        node = {"type": "string"}
    if path in notes:
        node["description"] = notes[path]
    return node


def generate() -> str:
    text = (CHART / "values.yaml").read_text()
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **schema_of(yaml.safe_load(text), (), descriptions(text)),
    }
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    target = CHART / "values.schema.json"
    fresh = generate()
    if "--check" in sys.argv[1:]:
        if not target.is_file() or target.read_text() != fresh:
            print("charts/putplace/values.schema.json is stale: run .venv/bin/python charts/gen_schema.py")
            return 1
        return 0
    target.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
