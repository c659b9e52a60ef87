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
    400: "Malformed parameter or body (one-line reason in `detail`)",
    401: "Missing or unknown API key",
    403: "The API key lacks the route's scope",
    404: "Not found",
    503: "The database is not answering, or the service is overloaded; retry later",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool | None = None  # None: required when in the path


@dataclass(frozen=True)
class Operation:
    path: str
    handler: Handler
    summary: str
    response: Any  # a msgspec Struct type, or dict for a free-form object
    params: tuple[Param, ...] = ()
    method: str = "get"
    body: Any = None  # the request body's msgspec Struct type
    status: int = 200  # of a success
    errors: dict[int, str] = field(default_factory=dict)  # besides those of every route
    body_required: bool = True


def document(operations: Sequence[Operation]) -> dict[str, Any]:
    bodies = [op.body for op in operations if op.body is not None]
    types = [op.response for op in operations] + bodies + [ErrorBody]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    error_ref = schemas[-1]
    body_refs = iter(schemas[len(operations) : len(operations) + len(bodies)])
    paths: dict[str, Any] = {}
    for op, schema in zip(operations, schemas, strict=False):
        responses: dict[str, Any] = {
            str(op.status): {
                "description": "OK" if op.status == 200 else "Created",
                "content": {"application/json": {"schema": schema}},
            }
        }
        for status, text in sorted({**_ERRORS, **op.errors}.items()):
            responses[str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": error_ref}},
            }
        operation: dict[str, Any] = {
            "operationId": op.handler.__name__,
            "summary": op.summary,
            "description": f"Needs an API key with scope `{required_scope(op.handler)}`.",
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path" if p.required is None else p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in op.params
            ],
            "security": [{"bearer": []}],
            "responses": responses,
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": next(body_refs)}},
            }
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "postback-ledger internal API",
            "version": "1",
            "description": "Wallets, events, receipt offers, the postback log, and spending"
            " (debits, credits, holds). Amounts are JSON strings holding exact decimals.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
