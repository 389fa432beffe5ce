"""Typed domain errors. Each carries its HTTP status and a stable code; it crosses the wire in a
reply as `{"error": {...}}` and becomes RFC 9457 problem+json at the edge (spec README §5)."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class FieldError(msgspec.Struct, rename="camel", omit_defaults=True):
    field: str
    code: str
    detail: str = ""


class ErrorBody(msgspec.Struct, rename="camel", omit_defaults=True):
    status: int
    code: str
    detail: str = ""
    field: str | None = None
    errors: list[FieldError] | None = None
    extra: dict[str, Any] | None = None


class DomainError(Exception):
    """Base of every error a handler may raise on purpose. Never retried: it is the answer."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        field: str | None = None,
        errors: list[FieldError] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code or self.default_code)
        self.detail = detail
        self.code = code or self.default_code
        self.field = field
        self.errors = errors
        self.extra = extra or None

    def to_body(self) -> ErrorBody:
        return ErrorBody(
            status=self.status,
            code=self.code,
            detail=self.detail,
            field=self.field,
            errors=self.errors,
            extra=self.extra,
        )

    @staticmethod
    def from_body(body: ErrorBody) -> DomainError:
        cls = _BY_STATUS.get(body.status, DomainError)
        error = cls.__new__(cls)
        DomainError.__init__(
            error, body.detail, code=body.code, field=body.field, errors=body.errors, **(body.extra or {})
        )
        error.status = body.status  # type: ignore[misc]  # keep an unusual status as sent
        return error


class BadRequest(DomainError):
    status = 400
    default_code = "bad_request"


class Unauthenticated(DomainError):
    status = 401
    default_code = "unauthenticated"


class Forbidden(DomainError):
    status = 403
    default_code = "forbidden"


class NotFound(DomainError):
    status = 404
    default_code = "not_found"


class NotAcceptable(DomainError):
    status = 406
    default_code = "not_acceptable"


class Conflict(DomainError):
    status = 409
    default_code = "conflict"


class PreconditionFailed(DomainError):
    status = 412
    default_code = "version_mismatch"


class PayloadTooLarge(DomainError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    status = 415
    default_code = "unsupported_media_type"


class Invalid(DomainError):
    status = 422
    default_code = "validation_failed"


class Locked(DomainError):
    status = 423
    default_code = "signing_key_locked"


class RateLimited(DomainError):
    status = 429
    default_code = "rate_limited"

    def __init__(self, detail: str = "", *, retry_after: int, **kwargs: Any) -> None:
        super().__init__(detail or "too many requests", retryAfter=max(1, int(retry_after)), **kwargs)


class InternalError(DomainError):
    status = 500
    default_code = "internal_error"


class Unavailable(DomainError):
    status = 503
    default_code = "dependency_unavailable"


class Timeout(DomainError):
    status = 504
    default_code = "timeout"


_BY_STATUS: dict[int, type[DomainError]] = {
    cls.status: cls
    for cls in (
        BadRequest, Unauthenticated, Forbidden, NotFound, NotAcceptable, Conflict, PreconditionFailed,
        PayloadTooLarge, UnsupportedMediaType, Invalid, Locked, InternalError, Unavailable, Timeout,
    )
}


def invalid_field(field: str, code: str, detail: str) -> Invalid:
    """422 validation_failed naming one field, the shape every route uses for bad input."""
    return Invalid(detail, field=field, errors=[FieldError(field=field, code=code, detail=detail)])


def reference_error(field: str, code: str, detail: str) -> Invalid:
    """422 for a body id naming no usable record; the code says why (`invalid_reference`,
    `inactive_reference`, …), on that field (spec README §5)."""
    return Invalid(detail, code=code, field=field, errors=[FieldError(field=field, code=code, detail=detail)])


def check_version(row: Any, if_match: int | None) -> None:
    """`If-Match: "<version>"` given and stale → 412 `version_mismatch` (spec README §3)."""
    if if_match is not None and row.version != if_match:
        raise PreconditionFailed(f"the record is at version {row.version}, not {if_match}",
                                 code="version_mismatch", currentVersion=row.version)
