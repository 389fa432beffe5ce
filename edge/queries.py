"""Query strings into contract structs, and their OpenAPI parameters.

A list route names its query struct once; the same struct validates the query string (400
`invalid_filter` naming the parameter) and documents every parameter in the OpenAPI document.
Lists are comma-separated; user-id filters accept `me`.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from litestar import Request
from litestar.openapi.spec import Operation, Parameter, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from contracts.errors import BadRequest
from contracts.validation import describe_validation_error

T = TypeVar("T")


def _base(tp: Any) -> Any:
    """Strip Optional/Annotated: `Annotated[str, ...] | None` → str; list stays list."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _base(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base(args[0]) if len(args) == 1 else tp
    return tp


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_base(tp)) is list


@functools.cache
def _fields(struct: type) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.encode_name: f for f in msgspec.structs.fields(struct)}


def parse_query(request: Request, struct: type[T], *, me: tuple[str, ...] = (), **fixed: Any) -> T:
    """`fixed` (Python field names) come from the path and win over the query string; None drops one."""
    fields = _fields(struct)
    by_python_name = {f.name: f.encode_name for f in fields.values()}
    pinned = {by_python_name[k]: v for k, v in fixed.items()}
    data: dict[str, Any] = {}
    for name, value in request.query_params.items():
        field = fields.get(name)
        if field is None or name in pinned:
            continue
        if _is_list(field.type):
            data[name] = [item.strip() for item in value.split(",") if item.strip()]
        elif name in me and value == "me":
            principal = request.scope.get("user")
            data[name] = str(principal.user_id) if principal else value
        else:
            data[name] = value
    data.update({k: v for k, v in pinned.items() if v is not None})
    try:
        return msgspec.convert(data, struct, strict=False)
    except msgspec.ValidationError as exc:
        field, _, detail = describe_validation_error(str(exc))
        field = field.split("/", 1)[0]  # the parameter, not the position in its comma list
        raise BadRequest(f"{field}: {detail}", code="invalid_filter", field=field) from exc


def _schema(tp: Any) -> Schema:
    base = _base(tp)
    if typing.get_origin(base) is list:
        inner = _schema(typing.get_args(base)[0])
        return Schema(type=OpenAPIType.STRING, description="comma-separated list",
                      enum=inner.enum)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return Schema(type=OpenAPIType.STRING, enum=[m.value for m in base])
    if base is bool:
        return Schema(type=OpenAPIType.BOOLEAN)
    if base is int:
        return Schema(type=OpenAPIType.INTEGER)
    if base is UUID:
        return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.UUID)
    if base is datetime:
        return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)
    if base is date:
        return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE)
    return Schema(type=OpenAPIType.STRING)


def documented(struct: type, *, exclude: tuple[str, ...] = ()) -> type[Operation]:
    """An OpenAPI operation class that lists `struct`'s fields as query parameters."""
    params = [
        Parameter(name=name, param_in="query", required=False, schema=_schema(f.type))
        for name, f in _fields(struct).items()
        if name not in exclude
    ]

    @dataclass
    class QueryOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *params]

    return QueryOperation
