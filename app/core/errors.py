"""Service errors. Each maps to one HTTP status with ``{"detail": "..."}``; never a 500 for bad input."""
from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Invalid(ServiceError):
    """Well-formed request whose content cannot be used (bad columns, one class, NaN, ...)."""

    status_code = 422


class Busy(ServiceError):
    """Too much work queued: retry after ``retry_after`` seconds (429 with ``Retry-After``)."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int = 5):
        super().__init__(detail)
        self.retry_after = int(retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}


class InsufficientStorage(ServiceError):
    """The disk is full (507)."""

    status_code = 507
