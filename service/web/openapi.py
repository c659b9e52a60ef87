"""The OpenAPI 3.1 document of every /v1/ route, generated from the operations table and the
same msgspec Structs the handlers encode, so the document cannot drift from the code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .auth import Handler, required_scope
from .middlewares import ErrorBody

_ERRORS = {
    400: "Malformed parameter (one-line reason in `detail`)",
    401: "Missing or unknown API key",
    403: "The API key lacks the route's scope",
    404: "Not found",
    503: "The database is not answering; retry later",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    path: str
    handler: Handler
    summary: str
    response: Any  # a msgspec Struct type, or dict for a free-form object
    params: tuple[Param, ...] = ()


def document(operations: Sequence[Operation]) -> dict[str, Any]:
    types = [op.response for op in operations] + [ErrorBody]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    error_ref = schemas[-1]
    paths: dict[str, Any] = {}
    for op, schema in zip(operations, schemas, strict=False):
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}}
        }
        for status, text in _ERRORS.items():
            responses[str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": error_ref}},
            }
        paths.setdefault(op.path, {})["get"] = {
            "operationId": op.handler.__name__,
            "summary": op.summary,
            "description": f"Needs an API key with scope `{required_scope(op.handler)}`.",
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in op.params
            ],
            "security": [{"bearer": []}],
            "responses": responses,
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "postback-ledger internal API",
            "version": "1",
            "description": "Wallets, events, receipt offers and the postback log. Amounts are"
            " JSON strings holding exact decimals.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
