"""Typed exceptions. Each carries the server's ``detail`` text and the HTTP status."""
from __future__ import annotations


class TransferRankError(Exception):
    """Base class: ``detail`` is the message a person can act on (the server's ``{"detail": ...}``)."""

    status_code: int | None = None

    def __init__(self, detail: str, *, status_code: int | None = None, body: object = None):
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        return self.detail if self.status_code is None else f"{self.detail} (HTTP {self.status_code})"


class BadRequestError(TransferRankError, ValueError):
    status_code = 400


class AuthError(TransferRankError):
    """401: no or unknown API key (pass ``api_key=`` or set ``TRANSFERRANK_API_KEY``)."""

    status_code = 401


class PermissionDeniedError(AuthError):
    """403: the key lacks the scope the call needs."""

    status_code = 403


class NotFoundError(TransferRankError):
    status_code = 404


class ConflictError(TransferRankError):
    status_code = 409


class PayloadTooLargeError(TransferRankError):
    status_code = 413


class ValidationError(TransferRankError, ValueError):
    """422: a well-formed request whose content cannot be used (bad columns, one class, ...).
    Also a ``ValueError``, as scikit-learn and plain Python code expect for bad input."""

    status_code = 422


class RateLimitError(TransferRankError):
    """429: too many requests; ``retry_after`` is the server's hint in seconds (or None)."""

    status_code = 429

    def __init__(self, detail: str, *, status_code: int | None = None, body: object = None,
                 retry_after: float | None = None):
        super().__init__(detail, status_code=status_code, body=body)
        self.retry_after = retry_after


class ServerError(TransferRankError):
    """5xx from the service."""

    status_code = 500


class JobFailedError(TransferRankError):
    """The job behind a ranking (or another long operation) ended as failed or cancelled."""

    def __init__(self, detail: str, *, job: dict | None = None):
        super().__init__(detail)
        self.job = job or {}


class TransferRankTimeoutError(TransferRankError, TimeoutError):
    """Waiting for a job took longer than the given timeout, or the HTTP request timed out."""


class TransferRankConnectionError(TransferRankError, ConnectionError):
    """The service could not be reached."""


_BY_STATUS = {400: BadRequestError, 401: AuthError, 403: PermissionDeniedError, 404: NotFoundError,
              405: BadRequestError, 409: ConflictError, 413: PayloadTooLargeError, 422: ValidationError,
              429: RateLimitError}


def error_for(status_code: int, detail: str, body: object = None, retry_after: float | None = None
              ) -> TransferRankError:
    """The exception for an HTTP error status."""
    if status_code == 429:
        return RateLimitError(detail, status_code=status_code, body=body, retry_after=retry_after)
    cls = _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else TransferRankError)
    return cls(detail, status_code=status_code, body=body)
