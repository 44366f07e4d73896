"""Catalogues of source tasks: import / export ESMs in hf-dataset-selector's layout, bulk register.

**Layout** (PyPI ``hf-dataset-selector``): one folder per source, ``<name>/config.json`` (with
``base_model_name``, the encoder the map was fitted on) and ``<name>/model.safetensors`` with
``model.weight`` (d, d) and ``model.bias`` (d,) -- ``fine_tuned(x) ~= x @ W.T + b``, the layout of
``estimators.esm.EmbeddingSpaceMap``. Import takes a folder of such folders (or one), or a zip of
them; each source is named ``<prefix><folder name>``. The base encoder is ``base_encoder`` when
given, else ``base_model_name`` matched against the model names and the hub ids of the built-in
encoders (``sentence-transformers/all-MiniLM-L6-v2`` -> ``minilm-l6``); the map's input size must
equal that encoder's dimension. Everything is validated before anything is written.

**Task embedding of an imported ESM.** A source imported without its texts has no base
embeddings to average, so its FAISS entry is derived from the map: take a reference sample of
base-encoder embeddings already on the server (up to ``REF_DATASETS`` datasets x ``REF_ROWS``
rows embedded with the same base encoder), weight each reference ``x`` by how far the map moves
it, ``w(x) = ||x W^T + b - x||^2`` (fine-tuning moves in-domain inputs most), and take the
weighted mean, L2-normalised. With no reference embeddings yet it is ``W^T b`` normalised (the
input direction the map pushes towards its bias). What it loses: this is a guess of the region of
the base space the source's fine-tuning changed, not the mean of the source's own texts, so FAISS
recall for imported sources is lower (use a larger ``prefilter_k``, or none), and the
domain-similarity estimators (``semb``, divergences) cannot score them (skipped with the reason).
The ESM estimators (``esm_logme`` ...) are exact.

**Placeholder dataset.** ``source_tasks.dataset_id`` references a dataset; an imported source gets
a row of kind ``esm`` (no texts, no labels, ``meta.esm_only``) holding the derived task embedding.

**Owners.** Imported sources (and their placeholder datasets) belong to ``owner``: the caller for
the API, ``PUBLIC_OWNER`` for the CLI (``transferrank sources import``). The base encoder is looked
up among the models ``owner`` may read; listing and export show only the caller's and the public
sources (another owner's answers 404 like a missing one).

**Export** writes ours in the same layout (float32 tensors, ``config.json`` with
``base_model_name`` = the base encoder's hub id where known, else its name).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.errors import Conflict, Invalid
from app.core.logging import get_logger
from app.db.models import PUBLIC_OWNER, Dataset, EncoderRow, FeatureSet, SourceTask
from app.db.session import scalars_in
from app.services.tenancy import check_read, check_write, visible

if TYPE_CHECKING:
    from app.core.progress import ProgressFn
    from app.services.context import Context
    from estimators.esm import EmbeddingSpaceMap

log = get_logger("catalogue")

#: hub ids of the built-in encoders (what hf-dataset-selector's ``base_model_name`` holds)
HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
REF_DATASETS = 8
REF_ROWS = 256
SYNC_IMPORT_LIMIT = 64  # more sources than this -> a job
MAX_ZIP_MEMBERS = 20_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


# ---------------------------------------------------------------------- reading folders
def _esm_folders(root: Path) -> list[Path]:
    if (root / "model.safetensors").is_file():
        return [root]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "model.safetensors").is_file())
    if not folders:
        raise Invalid(f"no ESM found: expected folders <name>/config.json + <name>/model.safetensors under {root.name}")
    return folders


def _safe_extract(data: bytes, dest: Path, max_bytes: int) -> Path:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Invalid(f"not a readable zip file: {exc}") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            raise Invalid(f"the zip has {len(infos)} files, over the limit of {MAX_ZIP_MEMBERS}")
        if sum(i.file_size for i in infos) > max_bytes:
            raise Invalid(f"the zip unpacks to more than {max_bytes} bytes")
        for info in infos:
            parts = PurePosixPath(info.filename).parts
            if not parts or info.filename.startswith("/") or ".." in parts or parts[0] == "__MACOSX":
                continue
            if parts[-1] not in ("config.json", "model.safetensors"):
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    entries = [p for p in dest.iterdir()]
    # one top folder holding the ESM folders (zip of a directory)
    if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / "model.safetensors").is_file():
        return entries[0]
    return dest


def _resolve_base(ctx: Context, base_model_name: str | None, explicit: str | None,
                  owner: str | None = None) -> EncoderRow:
    with ctx.Session() as s:
        rows: dict[str, EncoderRow] = {r.name: r for r in s.scalars(select(EncoderRow)
                                                                     .where(visible(EncoderRow.owner, owner)))}
    wanted = explicit or base_model_name
    if not wanted:
        raise Invalid("the ESM's config.json names no base_model_name: pass base_encoder")
    if wanted in rows:
        return rows[wanted]
    for name, hub in HUB_IDS.items():
        if hub == wanted and name in rows:
            return rows[name]
    for r in rows.values():
        if r.path and (r.path == wanted or r.path.rstrip("/").endswith("/" + wanted.split("/")[-1])
                       and "/" in wanted and (r.origin or "builtin") != "builtin"):
            return r
    raise Invalid(f"base encoder {wanted!r} is not a model of this server ({', '.join(sorted(rows))}); pass "
                  "base_encoder=<name> or register the model first (POST /v1/models)")


def _read(folder: Path, ctx: Context, base_encoder: str | None, prefix: str,
          owner: str | None = None) -> dict[str, Any]:
    from estimators.esm import EmbeddingSpaceMap

    try:
        esm = EmbeddingSpaceMap.load(folder)
    except ValueError as exc:
        raise Invalid(f"{folder.name}: {exc}") from None
    config = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    base = _resolve_base(ctx, config.get("base_model_name"), base_encoder, owner)
    if base.dim is not None and esm.dim_in != base.dim:
        raise Invalid(f"{folder.name}: the map takes {esm.dim_in}-d inputs but base encoder {base.name} gives "
                      f"{base.dim}-d embeddings")
    name = f"{prefix}{folder.name}"
    if not _NAME.match(name):
        raise Invalid(f"{name!r} is not a valid source name (letters, digits, '.', '_', '-')")
    return {"name": name, "esm": esm, "config": config, "base": base.name}


# ---------------------------------------------------------------------- task embedding
def derived_task_embedding(ctx: Context, esm: EmbeddingSpaceMap, base: str) -> tuple[np.ndarray, str]:
    """See the module docstring: displacement-weighted mean of reference base embeddings."""
    with ctx.Session() as s:
        keys = list(s.scalars(select(FeatureSet.blob).where(FeatureSet.encoder == base)
                              .order_by(FeatureSet.id).limit(REF_DATASETS)))
    rng = np.random.default_rng(0)
    refs = []
    for k in keys:
        X = np.asarray(ctx.blobs.get_array(k), dtype=np.float64)
        if X.ndim == 2 and X.shape[1] == esm.dim_in:
            refs.append(X if X.shape[0] <= REF_ROWS else X[np.sort(rng.choice(X.shape[0], REF_ROWS, replace=False))])
    W, b = np.asarray(esm.weight, dtype=np.float64), np.asarray(esm.bias, dtype=np.float64)
    if refs:
        R = np.vstack(refs)
        Y = R @ W.T + b
        w = np.sum((Y - R) ** 2, axis=1) if W.shape[0] == W.shape[1] else np.sum(Y**2, axis=1)
        v = (w[:, None] * R).sum(axis=0) / max(float(w.sum()), 1e-300)
        how = f"displacement-weighted mean of {R.shape[0]} reference {base} embeddings"
    else:
        v = W.T @ b
        how = "W^T b (no reference embeddings on the server yet)"
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        v, how = np.ones(esm.dim_in), how + "; degenerate, uniform direction"
        n = np.linalg.norm(v)
    return (v / n).astype(np.float32), how


def _check_new_names(ctx: Context, names: list[str], duplicate: str, hint: str = "",
                     shown: int | None = None) -> None:
    """Refuse names repeated in one request (422) or already taken in the catalogue (409, naming
    at most ``shown`` of them)."""
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise Invalid(f"{duplicate}: {', '.join(dup)}")
    with ctx.Session() as s:
        taken = set(scalars_in(s, select(SourceTask.name), SourceTask.name, names))
    if taken:
        raise Conflict(f"source(s) already exist: {', '.join(sorted(taken)[:shown])}{hint}")


# ---------------------------------------------------------------------- import
def import_dir(ctx: Context, root: Path, base_encoder: str | None = None, prefix: str = "",
               progress: ProgressFn | None = None, owner: str = PUBLIC_OWNER) -> dict[str, Any]:
    """Import every ESM folder under ``root`` (validated first, then written) as sources of ``owner``
    (default: the public catalogue, as the CLI does)."""
    from app.services import sources as sources_svc

    progress = progress or (lambda p, message=None: None)
    prefix = (prefix or "").strip()
    folders = _esm_folders(Path(root))
    items = [_read(f, ctx, base_encoder, prefix, owner) for f in folders]
    names = [it["name"] for it in items]
    _check_new_names(ctx, names, "duplicate source names", "; pick another prefix", shown=20)
    done = []
    indexed: list[tuple[int, np.ndarray]] = []  # added to the FAISS index at once (one index write)
    try:
        for i, it in enumerate(items):
            progress(i / len(items), f"importing {i + 1}/{len(items)}: {it['name']}")
            esm, base = it["esm"], it["base"]
            te, how = derived_task_embedding(ctx, esm, base)
            h = hashlib.sha256(b"transferrank-esm-only-v1\0" + it["name"].encode() + b"\0")
            h.update(np.ascontiguousarray(esm.weight).tobytes())
            h.update(np.ascontiguousarray(esm.bias).tobytes())
            config = it["config"]
            n_ex = config.get("num_examples")
            with ctx.blobs.writer() as w:
                labels_key = w.put_array(np.zeros(0, dtype=np.int64))
                te_key = w.put_array(te)
                esm_key = sources_svc._store_esm(ctx, w, esm.weight, esm.bias,
                                                 {"base_encoder": base, "imported_from": "hf-dataset-selector layout"})
                try:
                    with ctx.Session.begin() as s:
                        ds = Dataset(name=it["name"], owner=owner, sha256=h.hexdigest(), kind="esm",
                                     n_examples=int(n_ex or 0) if isinstance(n_ex, (int, float)) else 0,
                                     n_classes=0, label_names=[], labels_blob=labels_key, extra_blobs={},
                                     task_embedding_blob=te_key,
                                     meta={"format": "esm-only", "esm_only": True, "config": config}, modality="text")
                        s.add(ds)
                        s.flush()
                        t = SourceTask(name=it["name"], owner=owner, dataset_id=ds.id,
                                       description=str(config.get("task_id", "")),
                                       licence=str(config.get("license", config.get("licence", ""))), origin="import",
                                       status="ready", base_encoder=base, esm_blob=esm_key,
                                       esm_meta={"imported": True, "config": config, "task_embedding": how,
                                                 "dim": esm.dim_in})
                        s.add(t)
                        s.flush()
                        sid = t.id
                except IntegrityError:
                    w.keep_all()
                    raise Conflict(f"source {it['name']!r} was created concurrently") from None
            if base == ctx.settings.base_encoder:
                indexed.append((sid, te))
            done.append(it["name"])
    finally:  # what was committed is indexed even when a later source fails
        ctx.index.add_many(indexed)
    progress(1.0, f"imported {len(done)} source(s)")
    log.info("imported %d ESM source(s) (prefix %r)", len(done), prefix)
    return {"imported": len(done), "sources": done}


def import_upload(ctx: Context, data: bytes, base_encoder: str | None, prefix: str | None,
                  owner: str = PUBLIC_OWNER) -> tuple[dict[str, Any], bool]:
    """A zip of ESM folders imported as sources of ``owner``: at once (201) or, when large, on a job (202)."""
    tmp = Path(tempfile.mkdtemp(prefix="transferrank-esm-"))
    try:
        root = _safe_extract(data, tmp, 4 * ctx.settings.max_upload_bytes)
        if root == tmp and (root / "model.safetensors").is_file():
            raise Invalid("the zip holds model.safetensors at its top level: put each ESM in a folder named after "
                          "its source (<name>/config.json, <name>/model.safetensors)")
        folders = _esm_folders(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if len(folders) <= SYNC_IMPORT_LIMIT:
        try:
            return import_dir(ctx, root, base_encoder, prefix or "", owner=owner), True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with ctx.Session.begin() as s:
        job = ctx.jobs.create(s, "import_esms", message=f"queued: importing {len(folders)} ESM source(s)",
                              owner=owner)
        job_id = job.id

    def run(progress: ProgressFn) -> dict[str, Any]:
        try:
            return import_dir(ctx, root, base_encoder, prefix or "", progress, owner)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    ctx.jobs.submit(job_id, run)
    return {"status": "queued", "job": job_id, "n_folders": len(folders)}, False


# ---------------------------------------------------------------------- export
def export_zip(ctx: Context, name: str, owner: str | None = None) -> bytes:
    from safetensors.numpy import save as st_save

    esm, config = _export(ctx, name, owner)
    tensors = {"model.weight": np.ascontiguousarray(esm.weight, dtype=np.float32),
               "model.bias": np.ascontiguousarray(esm.bias, dtype=np.float32)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}/config.json", json.dumps(config, indent=2))
        z.writestr(f"{name}/model.safetensors", st_save(tensors, metadata={"format": "pt"}))
    return buf.getvalue()


def export_json(ctx: Context, name: str, owner: str | None = None) -> dict[str, Any]:
    esm, config = _export(ctx, name, owner)
    return {"name": name, "config": config, "dim": esm.dim_in, "weight": np.asarray(esm.weight).tolist(),
            "bias": np.asarray(esm.bias).tolist()}


def _export(ctx: Context, name: str, owner: str | None = None) -> tuple[EmbeddingSpaceMap, dict[str, Any]]:
    """The ESM of a source ``owner`` may read (its own or public); another owner's: 404 as for none."""
    from estimators.esm import EmbeddingSpaceMap

    with ctx.Session() as s:
        row = s.execute(select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id)
                        .where(SourceTask.name == name)).first()
        t = check_read(row[0] if row else None, owner, f"no source task named {name!r}")
        d = row[1] if row else None
        assert d is not None
        if t.esm_blob is None:
            raise Conflict(f"source {name!r} has no ESM ({t.status}); nothing to export")
    esm = EmbeddingSpaceMap.load(ctx.blobs.path(t.esm_blob))
    config = {"base_model_name": HUB_IDS.get(t.base_encoder, t.base_encoder),
              "transferrank_base_encoder": t.base_encoder, "task_id": name,
              "num_examples": int(d.n_examples), "esm_architecture": "linear", "embedding_dim": esm.dim_in,
              "licence": t.licence or "", "description": t.description or ""}
    return esm, config


# ---------------------------------------------------------------------- listing / bulk
def list_sources(ctx: Context, limit: int = 100, offset: int = 0, origin: str | None = None, status: str | None = None,
                 base_encoder: str | None = None, q: str | None = None, has_esm: bool | None = None,
                 owner: str | None = None) -> dict[str, Any]:
    """One page of the source tasks ``owner`` sees (its own and the public ones; None: all), by name,
    with the total, plus the model candidates it sees."""
    from app.services import models as models_svc
    from app.services.sources import source_dict

    conds = [visible(SourceTask.owner, owner)]
    if origin:
        conds.append(SourceTask.origin == origin)
    if status:
        conds.append(SourceTask.status == status)
    if base_encoder:
        conds.append(SourceTask.base_encoder == base_encoder)
    if q:
        conds.append(SourceTask.name.contains(q))
    if has_esm is not None:
        conds.append(SourceTask.esm_blob.is_not(None) if has_esm else SourceTask.esm_blob.is_(None))
    with ctx.Session() as s:
        total = s.scalar(select(func.count()).select_from(SourceTask).where(*conds))
        tasks = [source_dict(t, d) for t, d in s.execute(
            select(SourceTask, Dataset).join(Dataset, Dataset.id == SourceTask.dataset_id).where(*conds)
            .order_by(SourceTask.name).limit(limit).offset(offset))]
        bases = dict(s.execute(select(SourceTask.base_encoder, func.count()).where(visible(SourceTask.owner, owner))
                               .group_by(SourceTask.base_encoder)).all())
    models = models_svc.list_all(ctx, limit=1000, owner=owner)["models"]
    return {"tasks": tasks, "total": int(total or 0), "limit": limit, "offset": offset,
            "models": [dict(m, encoder_kind=m["kind"], kind="model") for m in models],
            "base_encoder": ctx.settings.base_encoder, "base_encoders": bases}


def bulk_register(ctx: Context, entries: list[dict[str, Any]], owner: str | None = None,
                  admin: bool = False) -> dict[str, Any]:
    """Register many sources from a manifest (each entry as ``POST /v1/sources`` by ``owner``); all
    entries are checked (dataset exists and is ``owner``'s to change, names free and distinct) before
    the first is registered. ``owner=None``: internal, any dataset (each source owned by its dataset's owner)."""
    from app.services import datasets as datasets_svc
    from app.services import sources as sources_svc

    if not entries:
        raise Invalid("the manifest lists no sources")
    names, datasets = [], []
    for e in entries:
        ds = datasets_svc.get(ctx, e["dataset"], owner)
        check_write(ds, owner, admin, f"no dataset with id {e['dataset']!r}; list them with GET /v1/datasets",
                    f"dataset {ds.id}")
        datasets.append(ds)
        names.append((e.get("name") or ds.name).strip())
    _check_new_names(ctx, names, "duplicate source names in the manifest")
    out = []
    for e, name, ds in zip(entries, names, datasets):
        src, queued = sources_svc.register(ctx, e["dataset"], name, e.get("description", ""), e.get("licence", ""),
                                           train_esm=e.get("train_esm", True), train=e.get("train") or {},
                                           owner=ds.owner if owner is None else owner, admin=admin or owner is None)
        out.append({"source": src["name"], "job": src["job"] if queued else None,
                    "status": "queued" if queued else "ready"})
    return {"registered": len(out), "sources": out}
