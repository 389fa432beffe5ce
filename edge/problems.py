"""RFC 9457 problem+json for every error the edge returns (spec README §5)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.exceptions.http_exceptions import (
    MethodNotAllowedException,
    NotFoundException,
)

from contracts.errors import DomainError, ErrorBody, FieldError
from contracts.observability import correlation_id
from contracts.validation import describe_validation_error

log = logging.getLogger("edge.problems")
PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 409: "Conflict", 412: "Precondition Failed", 413: "Payload Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 423: "Locked", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout",
}
_enc = msgspec.json.Encoder()


def problem_body(body: ErrorBody, instance: str, cid: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": f"/problems/{body.code}",
        "title": _TITLES.get(body.status, "Error"),
        "status": body.status,
        "detail": body.detail or body.code,
        "instance": instance,
        "code": body.code,
        "correlationId": cid or correlation_id.get(),
    }
    if body.field is not None:
        doc["field"] = body.field
    if body.errors:
        doc["errors"] = [{"field": e.field, "code": e.code, "detail": e.detail} for e in body.errors]
    for key, value in (body.extra or {}).items():
        doc.setdefault(key, value)
    return doc


def problem_response(body: ErrorBody, request: Request) -> Response[bytes]:
    """The problem document for `request`; the correlation id comes from the request's scope
    when the error escaped the middleware that set the context variable."""
    scoped = request.scope.get("correlation_id")
    cid = correlation_id.get() or (str(scoped) if scoped else None)
    headers = {}
    if scoped is not None and correlation_id.get() is None:
        headers["X-Correlation-ID"] = str(scoped)
    if body.status == 429 and body.extra and "retryAfter" in body.extra:
        headers["Retry-After"] = str(body.extra["retryAfter"])
    if body.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="imaging"'
    return Response(_enc.encode(problem_body(body, request.url.path, cid)), status_code=body.status,
                    media_type=PROBLEM, headers=headers)


def domain_error_handler(request: Request, exc: DomainError) -> Response[bytes]:
    return problem_response(exc.to_body(), request)


def validation_handler(request: Request, exc: ValidationException) -> Response[bytes]:
    errors: list[FieldError] = []
    source = "body"
    for item in exc.extra or []:
        if not isinstance(item, dict):
            continue
        source = item.get("source", source)
        key = str(item.get("key") or "")
        message = str(item.get("message") or "invalid")
        field, code, detail = describe_validation_error(message)
        if key and key != "data":
            field = describe_validation_error(f"{message} - at `$.{key}`")[0]
        errors.append(FieldError(field=field, code=code, detail=detail))
    if not errors:
        errors.append(FieldError(field="", code="invalid_format", detail=str(exc.detail)))
    first = errors[0]
    if source in ("query", "path", "header", "cookie"):
        body = ErrorBody(status=400, code="invalid_filter" if source == "query" else "bad_request",
                         detail=f"{first.field}: {first.detail}", field=first.field, errors=errors)
    else:
        body = ErrorBody(status=422, code="validation_failed", detail=f"{first.field}: {first.detail}",
                         field=first.field, errors=errors)
    return problem_response(body, request)


def http_handler(request: Request, exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code = {
        400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
        405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
        415: "unsupported_media_type", 429: "rate_limited", 503: "dependency_unavailable",
    }.get(status, "internal_error" if status >= 500 else "bad_request")
    detail = exc.detail if status < 500 else "internal error"
    if isinstance(exc, NotFoundException):
        detail = "no such resource"
    elif isinstance(exc, MethodNotAllowedException):
        detail = "method not allowed on this resource"
    elif isinstance(exc, NotAuthorizedException):
        code = "unauthenticated"
    return problem_response(ErrorBody(status=status, code=code, detail=str(detail)), request)


def internal_handler(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(ErrorBody(status=500, code="internal_error", detail="internal error"), request)


EXCEPTION_HANDLERS = {
    DomainError: domain_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_handler,
    Exception: internal_handler,
}
