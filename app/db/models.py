"""SQL tables. Large arrays never live here: ``*_blob`` columns hold content-addressed blob keys
(``<sha256>.<ext>``, see ``app.storage.blobs``).

The schema is created and changed only by Alembic migrations (``migrations/``); keep the two
in step (``tests/service/test_migrations.py`` compares them).
"""
from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.core.status import JobStatus, RankingStatus, SourceStatus


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes; they are UTC)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.isoformat()


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


# Tenancy: every user-owned row names its owner (an API key's ``owner``). ``PUBLIC_OWNER`` rows form
# the catalogue every caller may read (demo sources, built-in encoders); ``DEFAULT_OWNER`` is the one
# owner of open mode and of rows that existed before tenancy.
PUBLIC_OWNER = "public"
DEFAULT_OWNER = "local"


def _owner_column() -> Mapped[str]:
    return mapped_column(String(255), default=DEFAULT_OWNER, server_default=DEFAULT_OWNER, index=True)


_TS = DateTime(timezone=True)


class Dataset(Base):
    __tablename__ = "datasets"
    # a unique index, not a table constraint, so SQLite gains it without rebuilding the table
    __table_args__ = (Index("uq_datasets_owner_sha256", "owner", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = _owner_column()
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # one row per owner and content
    kind: Mapped[str] = mapped_column(String(16))  # "text" | "features"
    n_examples: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    label_names: Mapped[list] = mapped_column(JSON)
    texts_blob: Mapped[str | None] = mapped_column(String(80))  # json list of strings
    labels_blob: Mapped[str] = mapped_column(String(80))  # int64 (n,) 0..C-1
    features_blob: Mapped[str | None] = mapped_column(String(80))  # NPZ "features"
    extra_blobs: Mapped[dict] = mapped_column(JSON, default=dict)  # NPZ features_<m>/probs_<m>
    task_embedding_blob: Mapped[str | None] = mapped_column(String(80))  # float32 (d,), base encoder
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # format, columns, text_pair, ...
    task_type: Mapped[str] = mapped_column(String(16), default="classification",
                                           server_default="classification")  # |regression|multilabel
    modality: Mapped[str] = mapped_column(String(16), default="text", server_default="text")  # |image|features
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)

    feature_sets: Mapped[list[FeatureSet]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )


class EncoderRow(Base):
    """The model candidates (pretrained encoders) known to the service."""

    __tablename__ = "encoders"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), default=PUBLIC_OWNER, server_default=PUBLIC_OWNER, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(500), default="")
    dim: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[int | None] = mapped_column(BigInteger)
    licence: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    modality: Mapped[str] = mapped_column(String(16), default="text", server_default="text")  # text|image
    origin: Mapped[str] = mapped_column(String(16), default="builtin", server_default="builtin")  # |user|demo
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")  # loading|ready|failed
    options: Mapped[dict | None] = mapped_column(JSON)  # pooling, layer, max_length, ...
    meta: Mapped[dict | None] = mapped_column(JSON)  # family/base, source classes, loader facts
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime | None] = mapped_column(_TS, default=utcnow)


class FeatureSet(Base):
    """Features of one dataset under one encoder (the feature cache)."""

    __tablename__ = "feature_sets"
    __table_args__ = (UniqueConstraint("dataset_sha256", "encoder", name="uq_feature_sets_sha_encoder"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    encoder: Mapped[str] = mapped_column(String(100))
    blob: Mapped[str] = mapped_column(String(80))
    n: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="feature_sets")


class SourceTask(Base):
    """A source task in the catalogue: a dataset, its ESM (optional) and its FAISS entry."""

    __tablename__ = "source_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # FAISS id
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str] = _owner_column()
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    licence: Mapped[str] = mapped_column(String(200), default="")
    origin: Mapped[str] = mapped_column(String(16), default="user")  # "demo" | "user"
    status: Mapped[str] = mapped_column(String(16), default=SourceStatus.PENDING)  # app.core.status.SourceStatus
    base_encoder: Mapped[str] = mapped_column(String(100))
    esm_blob: Mapped[str | None] = mapped_column(String(80))  # safetensors
    esm_meta: Mapped[dict] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)

    dataset: Mapped[Dataset] = relationship()


class Score(Base):
    """The score cache: one row per (source, target content, encoder, estimator, params, version)."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint(
            "source", "target_sha256", "encoder", "estimator", "params_hash", "version", name="uq_scores_key"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255), index=True)
    source_kind: Mapped[str] = mapped_column(String(16))  # "model" | "task"
    target_sha256: Mapped[str] = mapped_column(String(64), index=True)
    encoder: Mapped[str] = mapped_column(String(100))
    estimator: Mapped[str] = mapped_column(String(64))
    params_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))  # "ranking" | "train_esm"
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # app.core.status.JobStatus
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    owner: Mapped[str | None] = mapped_column(String(64))  # process instance running it
    tenant: Mapped[str] = _owner_column()  # the owner (tenancy) the job works for
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(_TS)


class Ranking(Base):
    __tablename__ = "rankings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = _owner_column()
    target_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    candidates: Mapped[str] = mapped_column(String(16))  # "models" | "tasks"
    request: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=RankingStatus.QUEUED)  # app.core.status.RankingStatus
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TS)


class Feedback(Base):
    """An observed transfer result (fine-tuned ``source`` on ``target``), used as a prior."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = _owner_column()
    source: Mapped[str] = mapped_column(String(255), index=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    target_sha256: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)


class ApiKey(Base):
    """An API key: ``trk_<id>_<secret>``; only a salted HMAC of it is stored (``app.services.keys``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[str] = mapped_column(String(64))  # comma separated: read,write,admin
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex HMAC-SHA256(salt, ...)
    salt: Mapped[str | None] = mapped_column(String(64))  # hex, per key
    hash_scheme: Mapped[str] = mapped_column(String(32), default="hmac-sha256", server_default="hmac-sha256")
    created_at: Mapped[dt.datetime] = mapped_column(_TS, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(_TS)
