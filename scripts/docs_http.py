"""Write docs/reference/http-api.md, the reference of ``radar serve``'s HTTP
API, from the service's own OpenAPI schema.

The FastAPI app is built by :func:`radar_ad.apps.serve.create_app` with no
model (``radar=None``: a service whose model is still loading), which has
the same routes and schema as a loaded one, so no model is trained or read.
Every operation in ``app.openapi()`` becomes a section (summary, description,
parameters, request body, responses and their schemas) and every component
schema a table; the serve package's docstring, which describes the service's
behaviour, is the page's introduction and closing notes. Plain Markdown: no
JavaScript viewer, nothing loaded from the network.

    python scripts/docs_http.py            # write the page
    python scripts/docs_http.py --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from docs_page import page_main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "http-api.md"
GENERATOR = "scripts/docs_http.py"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REF = "#/components/schemas/"


def rest_to_markdown(text: str) -> str:
    """A reST docstring's inline markup as Markdown: ``code`` -> `code`,
    :role:`~a.b.name` -> `name`, :role:`a.b` -> `a.b`."""
    text = re.sub(r":[a-z]+:`~(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def paragraphs(docstring: str | None) -> list[str]:
    """A docstring's paragraphs, each joined into one line of Markdown (so
    that no wrapped line can start a list or a heading)."""
    import inspect

    text = inspect.cleandoc(docstring or "")
    return [rest_to_markdown(" ".join(line.strip() for line in block.splitlines()))
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, a pipe outside code escaped."""
    parts = " ".join(str(text or "").split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _anchor(name: str) -> str:
    """The anchor MkDocs' table of contents gives a heading of that text."""
    text = re.sub(r"[^\w\s-]", "", name).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def schema_type(schema: dict[str, Any]) -> str:
    """A schema in a few words of Markdown: its type, items, values or the
    component it refers to (linked to that component's table)."""
    if not schema:
        return "any JSON value"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return f"[`{name}`](#{_anchor(name)})"
    for combiner, word in (("anyOf", " or "), ("oneOf", " or "), ("allOf", " and ")):
        if combiner in schema:
            return word.join(schema_type(part) for part in schema[combiner])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(schema_type({**schema, "type": one}) for one in kind)
    if kind == "array":
        return f"array of {schema_type(schema.get('items', {}))}"
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"object of {schema_type(extra)} values"
        if "properties" in schema:
            return "object (" + ", ".join(f"`{name}`" for name in schema["properties"]) + ")"
        return "object"
    text = f"`{kind}`" if kind else "any JSON value"
    if "format" in schema:
        text += f" ({schema['format']})"
    if "enum" in schema:
        text += ": one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    return text


def _bounds(schema: dict[str, Any]) -> str:
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
             "minLength": "length >=", "maxLength": "length <=", "pattern": "matches"}
    return ", ".join(f"{word} `{schema[key]}`" for key, word in words.items() if key in schema)


def render_parameters(parameters: list[dict[str, Any]]) -> list[str]:
    lines = ["**Parameters**", "", "| Name | In | Type | Required | Default | Description |",
             "|---|---|---|---|---|---|"]
    for parameter in parameters:
        schema = parameter.get("schema", {})
        default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
        description = " ".join(filter(None, (parameter.get("description") or schema.get("description"),
                                             _bounds(schema))))
        lines.append(f"| `{parameter['name']}` | {parameter['in']} | {_cell(schema_type(schema))} | "
                     f"{'yes' if parameter.get('required') else 'no'} | {default} | {_cell(description)} |")
    return lines + [""]


def render_content(content: dict[str, Any]) -> list[str]:
    """One bullet per media type: its schema (and example, if any)."""
    lines = []
    for media, body in content.items():
        line = f"- `{media}`: {schema_type(body.get('schema', {}))}"
        if "example" in body:
            line += f", e.g. `{json.dumps(body['example'], sort_keys=True)}`"
        lines.append(line)
    return lines


def render_operation(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"## `{method.upper()} {path}`", ""]
    if operation.get("summary"):
        lines += [f"**{operation['summary']}**", ""]
    for paragraph in paragraphs(operation.get("description")):
        lines += [paragraph, ""]
    if operation.get("deprecated"):
        lines += ["**Deprecated.**", ""]
    if operation.get("parameters"):
        lines += render_parameters(operation["parameters"])
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        lines += [f"**Request body** ({required})", ""]
        for paragraph in paragraphs(body.get("description")):
            lines += [paragraph, ""]
        lines += render_content(body.get("content", {})) + [""]
    responses = operation.get("responses", {})
    if responses:
        lines += ["**Responses**", "", "| Status | Description | Body | Headers |", "|---|---|---|---|"]
        for status, response in sorted(responses.items()):
            content = "<br>".join(line.removeprefix("- ") for line in render_content(response.get("content", {})))
            headers = ", ".join(f"`{name}`" for name in sorted(response.get("headers", {})))
            lines.append(f"| {status} | {_cell(response.get('description', ''))} | {_cell(content)} | {headers} |")
        lines.append("")
    return lines


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### `{name}`", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    properties = schema.get("properties", {})
    if not properties:
        return lines + [f"Type: {schema_type(schema)}.", ""]
    required = set(schema.get("required", ()))
    lines += ["| Field | Type | Required | Description |", "|---|---|---|---|"]
    for field, spec in properties.items():
        # pydantic's title is the field's name in words: only where nothing describes the field
        description = " ".join(filter(None, (spec.get("description") or spec.get("title"), _bounds(spec))))
        lines.append(f"| `{field}` | {_cell(schema_type(spec))} | {'yes' if field in required else 'no'} | "
                     f"{_cell(description)} |")
    return lines + [""]


def render_openapi(schema: dict[str, Any], about: list[str]) -> str:
    """The page from an OpenAPI schema; ``about``: the service's description
    in paragraphs (the first introduces the page, the rest close it)."""
    operations = [(path, method, item[method]) for path, item in schema.get("paths", {}).items()
                  for method in METHODS if method in item]
    lines = ["# HTTP API", "",
             f"<!-- Generated by {GENERATOR} from the OpenAPI schema of radar_ad.apps.serve; "
             "do not edit by hand. -->", ""]
    lines += [about[0], ""] if about else []
    lines += ["The service is `radar serve MODEL` ([command line](cli.md#radar-serve)); this page is generated "
              "from its OpenAPI schema. The web page at `/` is not part of the API.", ""]
    lines += ["| Method | Path | Summary |", "|---|---|---|"]
    for path, method, operation in operations:
        lines.append(f"| {method.upper()} | [`{path}`](#{_anchor(f'{method} {path}')}) | "
                     f"{_cell(operation.get('summary', ''))} |")
    lines.append("")
    for path, method, operation in operations:
        lines += render_operation(path, method, operation)
    components = schema.get("components", {}).get("schemas", {})
    if components:
        lines += ["## Schemas", ""]
        for name in sorted(components):
            lines += render_schema(name, components[name])
    if len(about) > 1:
        lines += ["## About the service", ""]
        for paragraph in about[1:]:
            lines += [paragraph, ""]
    return "\n".join(lines).rstrip() + "\n"


def render() -> str:
    """The page's Markdown, from the service as the code defines it now."""
    from radar_ad.apps import serve

    app = serve.create_app(None)  # no model needed: the routes and schema are those of a loaded service
    return render_openapi(app.openapi(), paragraphs(serve.__doc__))


def main(argv: list[str] | None = None) -> int:
    return page_main(render, PAGE, GENERATOR, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
