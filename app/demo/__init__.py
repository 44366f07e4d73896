"""The demo catalogue: a few real, permissively licensed labelled text sources shipped with the
package so that a fresh ``transferrank serve`` ranks something real with no setup.

``load_demo_catalogue()`` reads only the committed files in ``app/demo/data`` (built by
``python -m app.demo.build_demo``; provenance and licences in ``app/demo/README.md``):
``catalogue.json`` + per source ``<name>.json.gz`` (texts, labels) and ``<name>.safetensors``
(float16 base embeddings, ESM weight and bias). File hashes are checked against the
catalogue; arrays are returned as float32 (embeddings) and a float64
``estimators.esm.EmbeddingSpaceMap``. Nothing is pickled, nothing is downloaded.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from estimators.esm import EmbeddingSpaceMap

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOGUE_FILE = "catalogue.json"


@dataclass(frozen=True, eq=False)
class DemoSource:
    """One shipped source task."""

    name: str
    description: str
    licence: str
    texts: list[str]
    labels: list[str]  # class names, one per text
    base_embeddings: np.ndarray  # (n, d) float32, the base encoder on ``texts`` (float16-rounded)
    esm: EmbeddingSpaceMap | None  # None when not shipped
    encoder: str  # registry name of the base encoder (``minilm-l6``)
    provenance: str = ""
    classes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.texts)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_catalogue(data_dir: Path) -> dict:
    path = data_dir / CATALOGUE_FILE
    if not path.is_file():
        raise ValueError(
            f"no demo catalogue at {path}; build it with `python -m app.demo.build_demo`"
        )
    doc = json.loads(path.read_text())
    if doc.get("format") != "transferrank-demo":
        raise ValueError(f"{path} is not a TransferRank demo catalogue")
    return doc


def _load_source(entry: dict, data_dir: Path, verify: bool) -> DemoSource:
    from safetensors import safe_open

    name = entry["name"]
    text_path = data_dir / entry["files"]["texts"]
    arr_path = data_dir / entry["files"]["arrays"]
    for kind, path in (("texts", text_path), ("arrays", arr_path)):
        if not path.is_file():
            raise ValueError(f"demo source {name!r}: missing file {path}")
        if verify and _sha256(path) != entry["sha256"][kind]:
            raise ValueError(f"demo source {name!r}: {path.name} does not match its sha256 in "
                             f"{CATALOGUE_FILE} (edited or truncated; rebuild the catalogue)")
    with gzip.open(text_path, "rt", encoding="utf-8") as f:
        doc = json.load(f)
    texts, labels = [str(t) for t in doc["texts"]], [str(l) for l in doc["labels"]]
    with safe_open(str(arr_path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
        keys = set(f.keys())
        X = f.get_tensor("base_embeddings").astype(np.float32)
        X.setflags(write=False)  # shared by the cached catalogue: copy before modifying
        w = f.get_tensor("esm_weight") if "esm_weight" in keys else None
        b = f.get_tensor("esm_bias") if "esm_bias" in keys else None
    n = len(texts)
    if len(labels) != n or X.shape[0] != n or n != int(entry.get("n", n)):
        raise ValueError(
            f"demo source {name!r}: {n} texts, {len(labels)} labels, {X.shape[0]} embeddings "
            f"(catalogue says {entry.get('n')})"
        )
    esm = None
    if w is not None:
        from estimators.esm import EmbeddingSpaceMap

        esm_meta = {"method": meta.get("esm_method", "adam"), "source": name,
                    "base_encoder": entry.get("encoder", ""), "stored_dtype": str(w.dtype)}
        esm = EmbeddingSpaceMap.from_arrays(
            {"weight": w.astype(np.float64), "bias": None if b is None else b.astype(np.float64),
             "metadata": esm_meta}
        )
    return DemoSource(
        name=name,
        description=entry.get("description", ""),
        licence=entry.get("licence", ""),
        texts=texts,
        labels=labels,
        base_embeddings=X,
        esm=esm,
        encoder=entry.get("encoder") or meta.get("encoder", ""),
        provenance=entry.get("provenance", ""),
        classes=list(entry.get("classes") or sorted(set(labels))),
        metadata={"esm": entry.get("esm", {}), "sha256": entry.get("sha256", {})},
    )


def load_demo_catalogue(data_dir: str | Path | None = None, *, verify: bool = True) -> list[DemoSource]:
    """All shipped demo sources, in catalogue order (checked against their sha256 by default)."""
    if data_dir is None:
        return list(_cached(verify))
    d = Path(data_dir)
    return [_load_source(e, d, verify) for e in _read_catalogue(d)["sources"]]


@lru_cache(maxsize=2)
def _cached(verify: bool) -> tuple[DemoSource, ...]:
    return tuple(_load_source(e, DATA_DIR, verify) for e in _read_catalogue(DATA_DIR)["sources"])


def demo_names() -> list[str]:
    """Names in the shipped catalogue without loading the arrays."""
    return [e["name"] for e in _read_catalogue(DATA_DIR)["sources"]]


__all__ = ["DemoSource", "load_demo_catalogue", "demo_names", "DATA_DIR"]
