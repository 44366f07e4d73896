"""TransferRank Python client: rank source tasks and pretrained models for transfer from a
notebook or a pipeline. Needs only ``httpx`` and ``numpy`` (pandas for DataFrames)::

    from transferrank import Client
    tr = Client("http://127.0.0.1:8000")            # api_key= or $TRANSFERRANK_API_KEY
    ranking = tr.rank(df, candidates="models")       # df: columns text, label
    ranking.to_pandas()

``TransferSelector`` (scikit-learn) and ``transferrank.integrations`` (Optuna, MLflow) build on it.
"""
from __future__ import annotations

from transferrank.client import AsyncClient, Client
from transferrank.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransferRankConnectionError,
    TransferRankError,
    TransferRankTimeoutError,
    ValidationError,
)
from transferrank.models import Dataset, Feedback, Job, Ranking, Source

__version__ = "0.1.0"

__all__ = ["AsyncClient", "AuthError", "BadRequestError", "Client", "ConflictError", "Dataset", "Feedback", "Job",
           "JobFailedError", "NotFoundError", "PayloadTooLargeError", "PermissionDeniedError", "Ranking",
           "RateLimitError", "ServerError", "Source", "TransferRankConnectionError", "TransferRankError",
           "TransferRankTimeoutError", "TransferSelector", "ValidationError"]


def __getattr__(name: str):
    if name == "TransferSelector":  # scikit-learn is imported only when the selector is used
        from transferrank.selector import TransferSelector

        return TransferSelector
    raise AttributeError(f"module 'transferrank' has no attribute {name!r}")
