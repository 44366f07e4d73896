"""Worker backends: ``local`` (threads + worker processes, default) or ``ray`` (actors on a Ray cluster).

Chosen by configuration:

- ``TRANSFERRANK_RAY_ADDRESS`` unset or empty -> ``LocalBackend``; ``host:port``, ``ray://host:port``
  or ``auto`` -> ``RayBackend`` connected to that cluster (``local`` starts a private Ray
  instance in this process, handy for a one-machine try).
- ``TRANSFERRANK_WORKERS``: local pool size (default 2), or number of Ray actors (default: one
  per GPU of the cluster, else one per CPU up to 8; an explicit number is capped at the GPUs).
- ``TRANSFERRANK_WORKER_PROCESSES`` / ``TRANSFERRANK_WORKER_NICE``: the local backend's worker
  processes for CPU-heavy numerics (default: the pool size; 0: threads) and their ``nice``.

``get_backend(settings)`` reads ``settings.ray_address`` / ``settings.workers`` of an
``app.core.config.Settings`` (``None`` there means the default); without one, the environment.
"""
from __future__ import annotations

from app.core.config import Settings
from app.workers.base import EsmTrainRequest, EsmTrainResult, ProgressFn, WorkerBackend

__all__ = [
    "EsmTrainRequest",
    "EsmTrainResult",
    "ProgressFn",
    "WorkerBackend",
    "get_backend",
    "backend_config",
]

DEFAULT_WORKERS = 2


def backend_config(settings: Settings | None = None) -> dict:
    """Resolve ``{"kind": "local"|"ray", "address": str|None, "workers": int|None}`` from settings/env.

    ``workers`` is None for Ray when not set: the backend sizes the pool from the cluster."""
    s = settings if settings is not None else Settings.from_env()  # ValueError names the variable
    address = s.ray_address.strip() if s.ray_address else None
    explicit = s.workers is not None
    workers: int | None = s.workers if s.workers is not None else DEFAULT_WORKERS
    if not address:
        return {"kind": "local", "address": None, "workers": workers}
    if not explicit:  # Ray: size the actor pool from the cluster (one per GPU, or per CPU)
        workers = None
    if address != "auto" and address != "local" and ":" not in address:
        raise ValueError(
            f"TRANSFERRANK_RAY_ADDRESS={address!r} is not a Ray address: use host:port "
            "(e.g. 127.0.0.1:6379), ray://host:10001, 'auto' (the cluster started by `ray start` "
            "on this machine) or leave it unset for the local thread pool"
        )
    return {"kind": "ray", "address": address, "workers": workers}


def get_backend(settings: Settings | None = None) -> WorkerBackend:
    """Build the configured backend (see module docstring)."""
    cfg = backend_config(settings)
    if cfg["kind"] == "local":
        from app.workers.local import LocalBackend

        cache_dir = settings.data_dir if settings is not None else None
        s = settings if settings is not None else Settings.from_env()
        return LocalBackend(max_workers=cfg["workers"], cache_dir=cache_dir, processes=s.worker_processes,
                            nice=s.worker_nice, idle=s.worker_idle)
    try:
        from app.workers.ray_backend import RayBackend
    except ModuleNotFoundError as exc:  # ray is an optional extra
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise RuntimeError(
            "TRANSFERRANK_RAY_ADDRESS is set but Ray is not installed: pip install 'transferrank[ray]'"
        ) from exc
    return RayBackend(cfg["address"], num_actors=cfg["workers"])
