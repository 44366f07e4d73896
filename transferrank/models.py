"""Results as dataclasses. Every one keeps the server's JSON in ``raw`` (fields added by newer
servers stay reachable) and is built by a ``from_json`` parser shared by both clients."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("to_pandas() needs pandas: pip install pandas") from None
    return pd


@dataclass
class Dataset:
    id: str
    name: str | None = None
    sha256: str | None = None
    n_examples: int | None = None
    n_classes: int | None = None
    kind: str | None = None
    task_type: str | None = None
    modality: str | None = None
    created: bool | None = None  # upload: True when new, False when the same content already existed
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict, created: bool | None = None) -> Dataset:
        return cls(id=d["id"], name=d.get("name"), sha256=d.get("sha256"), n_examples=d.get("n_examples"),
                   n_classes=d.get("n_classes"), kind=d.get("kind"), task_type=d.get("task_type"),
                   modality=d.get("modality"), created=created, raw=d)


@dataclass
class Job:
    id: str
    status: str
    kind: str | None = None
    progress: float = 0.0
    message: str | None = None
    error: str | None = None
    result: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)

    FINISHED = ("done", "failed", "cancelled")

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(id=d["id"], status=d.get("status", "queued"), kind=d.get("kind"),
                   progress=float(d.get("progress") or 0.0), message=d.get("message"), error=d.get("error"),
                   result=d.get("result") or {}, raw=d)


@dataclass
class Ranking:
    """A ranking. ``ranking`` is the list of dicts of the REST API, best first (present once
    ``status == "done"``); ``to_pandas()`` gives one row per candidate."""

    id: str | None
    status: str
    ranking: list[dict] = field(default_factory=list)
    target: Any = None
    candidates: str | None = None
    estimators: list[str] = field(default_factory=list)
    job: str | None = None
    progress: float = 0.0
    error: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> Ranking:
        return cls(id=d.get("id"), status=d.get("status", "done"), ranking=list(d.get("ranking") or []),
                   target=d.get("target"), candidates=d.get("candidates"), estimators=list(d.get("estimators") or []),
                   job=d.get("job"), progress=float(d.get("progress") or (1.0 if d.get("status") == "done" else 0.0)),
                   error=d.get("error"), raw=d)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def best(self) -> str | None:
        """The top candidate's name."""
        return self.ranking[0]["source"] if self.ranking else None

    @property
    def sources(self) -> list[str]:
        """Candidate names, best first."""
        return [r["source"] for r in self.ranking]

    @property
    def scores(self) -> dict[str, float | None]:
        """{candidate: combined score}, best first."""
        return {r["source"]: r.get("score") for r in self.ranking}

    def records(self) -> list[dict]:
        """One flat dict per candidate: source, rank, score, kind, one key per estimator, and the
        prior / observed values when the ranking has them."""
        ests = list(self.estimators) or sorted({e for r in self.ranking for e in (r.get("scores") or {})})
        out = []
        for r in self.ranking:
            row = {"source": r["source"], "rank": r.get("rank"), "score": r.get("score"), "kind": r.get("kind")}
            for e in ests:
                row[e] = (r.get("scores") or {}).get(e)
            for extra in ("prior", "static"):
                if extra in r:
                    row[extra] = r[extra]
            for metric, value in (r.get("observed") or {}).items():
                row[f"observed_{metric}"] = value
            out.append(row)
        return out

    def to_pandas(self):
        """A DataFrame, one row per candidate (best first): ``source``, ``rank``, ``score``,
        ``kind``, then one column per estimator."""
        pd = _pandas()
        cols = ["source", "rank", "score", "kind"] + list(self.estimators)
        df = pd.DataFrame.from_records(self.records())
        if df.empty:
            return pd.DataFrame(columns=cols)
        return df


@dataclass
class Source:
    name: str
    kind: str  # "task" | "model"
    status: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> Source:
        return cls(name=d["name"], kind=d.get("kind", "task"), status=d.get("status"), raw=d)


@dataclass
class Feedback:
    id: int | None
    source: str
    target: str
    metric: str
    value: float
    higher_is_better: bool = True
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> Feedback:
        return cls(id=d.get("id"), source=d["source"], target=d["target"], metric=d["metric"],
                   value=float(d["value"]), higher_is_better=bool(d.get("higher_is_better", True)), raw=d)
