"""Model candidates as first-class rows: register (load on a job), list, get, enable/disable, delete.

A user model is an ``encoders`` row with ``origin = "user"`` (``"demo"`` for the shipped image
models): ``kind`` (transformers | sentence-transformers | torchscript), ``path``, ``modality``
(text | image), ``options`` (pooling, layer, max_length, ...) and, once its job has loaded it,
``dim``, ``params``, ``licence`` and ``meta`` (family/base, number of source classes ``n_probs``).
Loading runs the torch loaders of ``app.encoders.custom``; a model that fails to load fails its
job with the loader's reason (and the row keeps ``status = "failed"`` and the ``error``).

The rankings find a user model by its name like a built-in one; the worker gets its full
``EncoderSpec`` (``spec_for``), so no process-wide registration is needed. Features of a model
with a classification head carry its source-class probabilities side by side; ``split_probs``
stores them under ``<name>#probs`` in the feature cache, where LEEP / NCE read them.

Tenancy: a model registered through the API belongs to the caller's owner; built-in, demo and
CLI-registered models are public (``PUBLIC_OWNER``). An owner sees and ranks with its own models
and the public ones; another owner's model answers like a missing one (404), and a public one
is changed (enable/disable, delete) only with the admin scope (403). ``owner=None``: internal, all.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select

from app.core.errors import Conflict, Invalid
from app.core.logging import get_logger
from app.db.models import PUBLIC_OWNER, EncoderRow, FeatureSet, Score, iso, utcnow
from app.db.session import rowcount
from app.encoders.base import EncoderSpec
from app.services.tenancy import check_read, check_write, visible

if TYPE_CHECKING:
    from app.core.progress import ProgressFn
    from app.services.context import Context

log = get_logger("models")

KINDS = ("transformers", "sentence-transformers", "torchscript")
MODALITIES = ("text", "image")
POOLINGS = ("mean", "cls", "pooler")
PROBS_SUFFIX = "#probs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
OPTION_KEYS = {"pooling", "layer", "max_length", "normalize", "image_size", "channels", "mean", "std", "device"}
SYNC_WAIT_SECONDS = 30.0


def is_user(row: EncoderRow) -> bool:
    return (row.origin or "builtin") != "builtin"


def spec_for(row: EncoderRow) -> EncoderSpec:
    """The worker-side spec of a model row (``custom`` routes it to ``app.encoders.custom``)."""
    options = dict(row.options or {})
    if is_user(row):
        options.update(custom=True, modality=row.modality or "text", with_probs=True)
    return EncoderSpec(name=row.name, kind=row.kind, path=row.path or "", dim=row.dim, params=row.params,
                       licence=row.licence or "", options=options)


def worker_encoder(ctx: Context, name: str) -> str | EncoderSpec:
    """What to hand a worker for model ``name``: its spec for a user model, else the name."""
    with ctx.Session() as s:
        row = s.get(EncoderRow, name)
    return spec_for(row) if row is not None and is_user(row) else name


def warm_up_inputs(encoder: object) -> list[Any]:
    """Two throw-away inputs of the encoder's modality (blank images for a vision model)."""
    if isinstance(encoder, EncoderSpec) and (encoder.options or {}).get("modality") == "image":
        from PIL import Image

        return [Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32), (255, 255, 255))]
    return ["warm up the encoder", "second text"]


def n_probs(ctx: Context, name: str) -> int:
    with ctx.Session() as s:
        row = s.get(EncoderRow, name)
    return int(((row.meta or {}).get("n_probs") or 0) if row is not None and is_user(row) else 0)


def model_dict(row: EncoderRow) -> dict[str, Any]:
    meta = dict(row.meta or {})
    return {"name": row.name, "owner": row.owner, "kind": row.kind, "modality": row.modality or "text", "dim": row.dim,
            "params": row.params, "licence": row.licence, "path": row.path, "origin": row.origin or "builtin",
            "status": row.status or "ready", "enabled": bool(row.enabled), "options": row.options or {},
            "family": meta.get("family", ""), "n_source_classes": int(meta.get("n_probs") or 0),
            "has_head": bool(meta.get("n_probs")), "job": row.job_id, "error": row.error,
            "created_at": iso(row.created_at)}


def _resolve_path(path: str) -> str:
    """A local file/dir, or a hub id that is already in the local Hugging Face cache."""
    p = Path(path).expanduser()
    if p.exists():
        return str(p.resolve())
    if re.match(r"^[\w.-]+/[\w.-]+$", path):
        try:
            import os

            from huggingface_hub import snapshot_download

            return snapshot_download(path, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE") or None)
        except Exception as exc:  # not cached: nothing is fetched
            raise Invalid(f"{path!r} is neither a local path nor a hub id in the local Hugging Face cache "
                          f"(nothing is downloaded): {type(exc).__name__}") from None
    raise Invalid(f"no file or directory at {path!r} (the path is read on the server)")


def _check(name: str, kind: str | None, modality: str | None, pooling: str | None, options: dict[str, Any]) -> None:
    if not _NAME.match(name or ""):
        raise Invalid("a model name is 1-100 characters: letters, digits, '.', '_' or '-', starting with a "
                      f"letter or digit; got {name!r}")
    if kind is not None and kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if modality is not None and modality not in MODALITIES:
        raise Invalid(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise Invalid(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    bad = set(options) - OPTION_KEYS
    if bad:
        raise Invalid(f"unknown model option(s) {', '.join(sorted(bad))}; allowed: {', '.join(sorted(OPTION_KEYS))}")


def add(ctx: Context, name: str, path: str, kind: str | None = None, modality: str | None = None,
        pooling: str | None = None, layer: int | None = None, licence: str | None = None,
        options: dict[str, Any] | None = None, *, origin: str = "user", wait: float | None = None,
        inline: bool = False, owner: str = PUBLIC_OWNER) -> tuple[dict[str, Any], bool]:
    """Register a model owned by ``owner`` (default: public, as the CLI does) and load it on a job.
    Returns ``(body, done)``: done -> the loaded model (201); else the model with ``"status": "loading"``
    and its ``"job"`` (202). A load failure within the wait raises ``Invalid`` with the loader's
    reason and leaves no row behind."""
    from app.encoders import custom

    options = dict(options or {})
    _check(name, kind, modality, pooling, options)
    local = _resolve_path(path)
    kind = kind or custom.guess_kind(local)
    modality = modality or custom.guess_modality(local, kind)
    if kind == "torchscript" and not Path(local).is_file():
        raise Invalid(f"a torchscript model is one file saved with torch.jit.save; {path!r} is a directory")
    if kind != "torchscript" and not Path(local).is_dir():
        raise Invalid(f"a {kind} model is a directory (config.json, weights); {path!r} is a file")
    if modality == "text":
        options["pooling"] = pooling or options.get("pooling") or "mean"
    elif pooling is not None:
        raise Invalid("pooling applies to text models")
    if layer is not None:
        options["layer"] = int(layer)
    with ctx.Session.begin() as s:
        if s.get(EncoderRow, name) is not None:
            raise Conflict(f"a model named {name!r} already exists; DELETE /v1/models/{name} first or pick "
                           "another name")
        created = ctx.jobs.create(s, "load_model", message=f"queued: loading model {name}", owner=owner)
        s.add(EncoderRow(name=name, owner=owner, kind=kind, path=local, dim=None, params=None, licence=licence or "",
                         enabled=True, modality=modality, origin=origin, status="loading", options=options,
                         meta={}, job_id=created.id, created_at=utcnow()))
        job_id = created.id

    def run(progress: ProgressFn) -> dict[str, Any]:
        return _load_job(ctx, name, licence, progress)

    def on_error(err: str) -> None:
        with ctx.Session.begin() as s:
            row = s.get(EncoderRow, name)
            if row is not None:
                row.status, row.error = "failed", err

    if inline:
        ctx.jobs.run_inline(job_id, run, on_error)
    else:
        ctx.jobs.submit(job_id, run, on_error)
        ctx.jobs.wait(job_id, timeout=SYNC_WAIT_SECONDS if wait is None else wait, poll=0.05)
    job = ctx.jobs.get(job_id)
    if job["status"] == "failed":
        with ctx.Session.begin() as s:
            s.execute(delete(EncoderRow).where(EncoderRow.name == name))
        raise Invalid(f"model {name!r} could not be loaded: {job['error']}")
    if job["status"] == "done":
        return get(ctx, name, owner), True
    return get(ctx, name, owner), False  # status "loading", with its "job"


def _load_job(ctx: Context, name: str, licence: str | None, progress: ProgressFn) -> dict[str, Any]:
    from app.encoders.registry import get_encoder

    progress(0.05, f"loading model {name}")
    with ctx.Session() as s:
        row = s.get(EncoderRow, name)
        if row is None:
            raise Invalid(f"model {name!r} was deleted while loading")
        spec = spec_for(row)
    t0 = time.perf_counter()
    enc = get_encoder(spec)  # the loaders' ValueError (with the reason) fails the job
    facts: dict[str, Any] = enc.describe() if hasattr(enc, "describe") else {"dim": enc.dim, "params": None}
    progress(0.8, f"checking model {name}")
    if facts.get("modality") and facts["modality"] != row.modality:
        raise ValueError(f"the loader reads {row.path} as a {facts['modality']} model, not {row.modality}")
    seconds = round(time.perf_counter() - t0, 3)
    with ctx.Session.begin() as s:
        row = s.get(EncoderRow, name)
        if row is None:
            raise Invalid(f"model {name!r} was deleted while loading")
        row.dim, row.params = int(facts["dim"]), facts.get("params")
        row.licence = licence or facts.get("licence") or row.licence or ""
        row.meta = {"family": facts.get("family", ""), "n_probs": int(facts.get("n_probs") or 0),
                    "load_seconds": seconds, "device": facts.get("device")}
        row.status, row.error = "ready", None
    log.info("model %s loaded (%s, dim %s, %s params) in %.2fs", name, spec.kind, facts["dim"],
             facts.get("params"), seconds)
    return {"model": name, "dim": int(facts["dim"]), "params": facts.get("params")}


def list_all(ctx: Context, modality: str | None = None, origin: str | None = None, limit: int = 100,
             offset: int = 0, owner: str | None = None) -> dict[str, Any]:
    """One page of the models ``owner`` sees: its own and the public ones (None: all)."""
    with ctx.Session() as s:
        q = select(EncoderRow).where(visible(EncoderRow.owner, owner)).order_by(EncoderRow.name)
        if modality:
            q = q.where(EncoderRow.modality == modality)
        if origin:
            q = q.where(EncoderRow.origin == origin)
        rows = list(s.scalars(q.limit(limit).offset(offset)))
    return {"models": [model_dict(r) for r in rows], "limit": limit, "offset": offset}


def _missing(name: str) -> str:
    return f"no model named {name!r}; list them with GET /v1/models"


def get(ctx: Context, name: str, owner: str | None = None) -> dict[str, Any]:
    """The model, if ``owner`` may read it (its own or public); else 404 as for no model."""
    with ctx.Session() as s:
        return model_dict(check_read(s.get(EncoderRow, name), owner, _missing(name)))


def set_enabled(ctx: Context, name: str, enabled: bool, owner: str | None = None,
                admin: bool = False) -> dict[str, Any]:
    """Enable or disable a model ``owner`` may change (its own; a public one with ``admin``)."""
    with ctx.Session.begin() as s:
        row = check_write(s.get(EncoderRow, name), owner, admin, _missing(name), f"model {name!r}")
        row.enabled = bool(enabled)
    return get(ctx, name, owner)


def remove(ctx: Context, name: str, owner: str | None = None, admin: bool = False) -> dict[str, Any]:
    """Delete a user model with its cached features and scores (built-in ones can be disabled);
    ``owner`` must be allowed to change it (its own; a public one with ``admin``)."""
    from app.services import datasets as datasets_svc

    with ctx.Session.begin() as s:
        row = check_write(s.get(EncoderRow, name), owner, admin, _missing(name), f"model {name!r}")
        if not is_user(row):
            raise Conflict(f"{name!r} is a built-in model: disable it instead (PATCH /v1/models/{name} "
                           '{"enabled": false})')
        if row.status == "loading":
            raise Conflict(f"model {name!r} is still loading (job {row.job_id}); wait for the job to end")
        encs = (name, name + PROBS_SUFFIX)
        keys = set(s.scalars(select(FeatureSet.blob).where(FeatureSet.encoder.in_(encs))))
        n_fs = rowcount(s.execute(delete(FeatureSet).where(FeatureSet.encoder.in_(encs))))
        n_scores = rowcount(s.execute(delete(Score).where(Score.source == name, Score.source_kind == "model")))
        s.delete(row)
    with ctx.Session() as s:
        still = datasets_svc.referenced_blobs(s)
    removed = sum(1 for k in keys if k not in still and ctx.blobs.delete(k))
    from app.encoders.registry import clear_cache

    clear_cache()  # frees the loaded weights of the deleted model (others reload on use)
    return {"name": name, "deleted": True, "feature_sets_removed": n_fs, "scores_removed": n_scores,
            "blobs_removed": removed}


def ranking_candidates(ctx: Context, modality: str, owner: str | None = None) -> list[str]:
    """Enabled, loaded model names ``owner`` may rank with for targets of ``modality`` (text | image)."""
    with ctx.Session() as s:
        return list(s.scalars(select(EncoderRow.name).where(
            EncoderRow.enabled.is_(True), or_(EncoderRow.status.is_(None), EncoderRow.status == "ready"),
            EncoderRow.modality == modality, visible(EncoderRow.owner, owner)).order_by(EncoderRow.name)))


DEMO_MODELS_DIR = Path(__file__).resolve().parents[1] / "demo" / "data" / "image_models"


def seed_demo_models(ctx: Context, directory: Path | None = None) -> int:
    """Add the shipped image models (``app/demo/data/image_models/manifest.json``, trained here by
    ``python -m app.demo.image_models``) as ``origin = "demo"`` rows, with the facts recorded at
    training time (no load at start). Idempotent; returns how many were added."""
    import json

    directory = Path(directory or DEMO_MODELS_DIR)
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return 0
    added = 0
    entries = json.loads(manifest.read_text()).get("models", [])
    with ctx.Session.begin() as s:
        for e in entries:
            path = directory / e["file"]
            row = s.get(EncoderRow, e["name"])
            if row is not None:
                if row.origin == "demo" and path.is_file():
                    row.path = str(path)  # the package may have moved since the row was written
                continue
            if not path.is_file():
                continue
            s.add(EncoderRow(name=e["name"], kind=e["kind"], path=str(path), dim=int(e["dim"]),
                             params=int(e["params"]), licence=e.get("licence", ""), enabled=True,
                             modality=e.get("modality", "image"), origin="demo", owner=PUBLIC_OWNER, status="ready",
                             options={},
                             meta={"family": e.get("family", ""), "n_probs": int(e.get("n_probs", 0)),
                                   "description": e.get("description", "")}, created_at=utcnow()))
            added += 1
    if added:
        log.info("demo catalogue: %d image model(s) added", added)
    return added
