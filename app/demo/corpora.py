"""Offline, real text-classification corpora for the TransferRank demo catalogue and benchmarks.

Every loader returns ``(texts, labels)``: two equally long ``list[str]``. Nothing is downloaded
from a model/data hub: the corpora come from Debian packages (fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` into a cache directory, never installed system-wide) and from
the PyPI package ``chatterbot-corpus``.

Root directory
    Loaders take ``root``: the directory the ``.deb`` files were unpacked into (it then holds
    ``usr/share/...`` and ``usr/lib/R/site-library/...``). Default: ``$TRANSFERRANK_CORPORA`` or
    ``/work/cache/corpora``. When a file is missing there, the system location (``/usr/share``,
    ``/usr/lib/R/site-library``) is tried, so an installed package also works.
    ``fetch_all(root)`` downloads and unpacks whatever is missing.

Loaders (all deterministic; identical texts are kept once, first occurrence wins)
    ``load_wordnet(label="supersense"|"pos")``   WordNet 3.0 glosses; 45 lexicographer files or 4 POS
    ``load_fortunes()``                           fortune-mod cookies by category file
    ``load_austen(min_words=8)``                  Jane Austen paragraphs by novel (6 classes)
    ``load_fine_foods(split="all")``              Amazon fine-food reviews, ``great`` / ``other``
    ``load_trump_tweets(label="client"|"period")`` tweets by client (android/iphone/web) or period
    ``load_chatterbot()``                          chatterbot-corpus utterances by topic (21)
    ``load_bing_lexicon()``                        Bing opinion lexicon words, positive / negative

    ``DATASETS`` maps a short name (e.g. ``"wordnet_supersense"``) to a zero-argument-plus-root
    loader; ``load(name, root=None)`` calls it. ``LICENCES`` records the licence of each corpus.

Sampling helpers (seeded, return new lists, never mutate the input)
    ``sample(texts, labels, max_n, seed)``                 stratified subsample of at most max_n
    ``sample_per_class(texts, labels, n_per_class, seed)`` at most n per class
    ``filter_min_count(texts, labels, min_count)``         drop classes with fewer examples
    ``train_test_split(texts, labels, n_train, n_test, seed)`` disjoint stratified split
"""
from __future__ import annotations

import bz2
import gzip
import html
import lzma
import re
import subprocess
import warnings
import zlib
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

Corpus = tuple[list[str], list[str]]

DEFAULT_ROOT = "/work/cache/corpora"  # Settings.corpora default
_R_LIB = "usr/lib/R/site-library"

#: Debian package that provides each corpus (chatterbot comes from PyPI).
DEBIAN_PACKAGES: dict[str, str] = {
    "wordnet": "wordnet-base",
    "fortunes": "fortunes",
    "austen": "r-cran-janeaustenr",
    "fine_foods": "r-cran-modeldata",
    "trump_tweets": "r-cran-dslabs",
    "bing_lexicon": "r-cran-tidytext",
}

#: Licence of each corpus (from the Debian copyright files / PyPI metadata).
LICENCES: dict[str, str] = {
    "wordnet": "WordNet 3.0 licence (Princeton University; permissive, BSD-like) — Debian wordnet-base",
    "fortunes": "BSD-3-Clause (fortune-mod, The Regents of the University of California) — Debian fortunes",
    "austen": "Public domain texts (Project Gutenberg); janeaustenr package MIT — Debian r-cran-janeaustenr",
    "fine_foods": "modeldata package MIT; reviews from the SNAP Amazon Fine Food Reviews (McAuley & Leskovec, "
                  "WWW 2013) — Debian r-cran-modeldata",
    "trump_tweets": "dslabs package Artistic-2.0 (tweets collected from the Trump Twitter Archive) — Debian "
                    "r-cran-dslabs",
    "chatterbot": "BSD-3-Clause — PyPI chatterbot-corpus",
    "bing_lexicon": "tidytext package MIT; opinion lexicon by Hu & Liu (KDD 2004) — Debian r-cran-tidytext",
}

# WordNet 3.0 lexicographer files, indexed by the lex_filenum field of data.* (lexnames(5WN)).
WORDNET_LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


# ----------------------------------------------------------------------------------- paths
def default_root() -> Path:
    from app.core.config import Settings

    return Settings.from_env().corpora


def _find(root: str | Path | None, rel: str) -> Path:
    """``root/rel`` if it exists, else ``/rel`` (system install); ValueError naming the fix."""
    base = Path(root) if root is not None else default_root()
    for cand in (base / rel, Path("/") / rel):
        if cand.exists():
            return cand
    raise ValueError(
        f"corpus file {rel!r} not found under {base} nor under /. Run "
        f"`python -m app.demo.corpora fetch --root {base}` (apt-get download + dpkg-deb -x) "
        f"or set TRANSFERRANK_CORPORA to the directory the packages were unpacked into."
    )


def _dedupe(texts: Sequence[str], labels: Sequence[str]) -> Corpus:
    seen: set[str] = set()
    out_t: list[str] = []
    out_l: list[str] = []
    for t, l in zip(texts, labels):
        if t and t not in seen:
            seen.add(t)
            out_t.append(t)
            out_l.append(l)
    return out_t, out_l


# ---------------------------------------------------------------------------- R data reader
def _rdata_convert(raw: bytes):
    import rdata  # PyPI rdata (bench extra)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))


@cache
def _r_index(data_dir: str) -> dict:
    return _rdata_convert(gzip.decompress(Path(data_dir, "Rdata.rdx").read_bytes()))["variables"]


def read_r_dataset(package: str, variable: str, root: str | Path | None = None):
    """One variable of an installed R package's lazy-load data base (``data/Rdata.{rdx,rdb}``).

    The ``.rdx`` maps each variable to (offset, length) in the ``.rdb``; each block is a 4-byte
    big-endian length, a type byte (``Z`` raw LZMA2, ``2`` bzip2, ``0`` none, else zlib from
    byte 4), then an RDS serialisation. Returns what ``rdata`` converts it to (a DataFrame or
    an array).
    """
    data_dir = _find(root, f"{_R_LIB}/{package}/data/Rdata.rdx").parent
    index = _r_index(str(data_dir))
    if variable not in index:
        raise ValueError(f"R package {package!r} has no dataset {variable!r}; it has {sorted(index)}")
    offset, length = (int(v) for v in index[variable])
    with open(data_dir / "Rdata.rdb", "rb") as fh:
        fh.seek(offset)
        block = fh.read(length)
    kind = block[4:5]
    if kind == b"Z":
        raw = lzma.decompress(
            block[5:], format=lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}],
        )
    elif kind == b"2":
        raw = bz2.decompress(block[5:])
    elif kind == b"0":
        raw = block[5:]
    else:
        raw = zlib.decompress(block[4:])
    return _rdata_convert(raw)


# ---------------------------------------------------------------------------------- loaders
def load_wordnet(root: str | Path | None = None, label: str = "supersense") -> Corpus:
    """WordNet 3.0 synset glosses (definition plus examples) with their supersense.

    ``label="supersense"``: the lexicographer file (45 classes, e.g. ``noun.animal``);
    ``label="pos"``: ``noun`` / ``verb`` / ``adj`` / ``adv``.
    """
    if label not in ("supersense", "pos"):
        raise ValueError(f"label must be 'supersense' or 'pos', got {label!r}")
    texts: list[str] = []
    labels: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = _find(root, f"usr/share/wordnet/data.{pos}")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue
                head, gloss = line.split(" | ", 1)
                texts.append(gloss.strip())
                labels.append(WORDNET_LEXNAMES[int(head.split(" ", 2)[1])] if label == "supersense" else pos)
    return _dedupe(texts, labels)


def load_fortunes(root: str | Path | None = None) -> Corpus:
    """fortune-mod cookies (Debian ``fortunes``), label = category file name (~40 classes)."""
    d = _find(root, "usr/share/games/fortunes")
    texts: list[str] = []
    labels: list[str] = []
    for path in sorted(d.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        body = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"\n%\n", "\n" + body):
            entry = entry.strip("\n%").strip()
            if entry:
                texts.append(entry)
                labels.append(path.name)
    return _dedupe(texts, labels)


AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")


def load_austen(root: str | Path | None = None, min_words: int = 8) -> Corpus:
    """Jane Austen's six novels split into paragraphs (blank-line separated), label = novel.

    Paragraphs with fewer than ``min_words`` words (headings such as "CHAPTER I") are dropped.
    """
    texts: list[str] = []
    labels: list[str] = []
    for novel in AUSTEN_NOVELS:
        lines = [str(x) if x is not None else "" for x in read_r_dataset("janeaustenr", novel, root)]
        para: list[str] = []
        for line in lines + [""]:
            if line.strip():
                para.append(line.strip())
            elif para:
                text = " ".join(para)
                para = []
                if len(text.split()) >= min_words:
                    texts.append(text)
                    labels.append(novel)
    return _dedupe(texts, labels)


def _clean_review(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def load_fine_foods(root: str | Path | None = None, split: str = "all") -> Corpus:
    """Amazon fine-food reviews (modeldata ``small_fine_foods``), label ``great`` / ``other``.

    ``split``: ``"train"`` (4,000), ``"test"`` (1,000) or ``"all"``.
    """
    names = {"train": ["training_data"], "test": ["testing_data"], "all": ["training_data", "testing_data"]}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    texts: list[str] = []
    labels: list[str] = []
    for var in names[split]:
        df = read_r_dataset("modeldata", var, root)
        texts += [_clean_review(str(t)) for t in df["review"]]
        labels += [str(s) for s in df["score"]]
    return _dedupe(texts, labels)


_CLIENTS = {"Twitter for Android": "android", "Twitter for iPhone": "iphone", "Twitter Web Client": "web"}


def load_trump_tweets(root: str | Path | None = None, label: str = "client") -> Corpus:
    """Donald Trump's tweets 2009-2018 (dslabs ``trump_tweets``).

    ``label="client"``: ``android`` / ``iphone`` / ``web`` (other clients dropped).
    ``label="period"``: ``2009-2012`` / ``2013`` / ``2014-2015`` / ``2016-2018`` by creation time.
    URLs are replaced by ``URL``.
    """
    if label not in ("client", "period"):
        raise ValueError(f"label must be 'client' or 'period', got {label!r}")
    df = read_r_dataset("dslabs", "trump_tweets", root)
    texts_all = [re.sub(r"https?://\S+", "URL", html.unescape(str(t))).strip() for t in df["text"]]
    if label == "client":
        pairs = [(t, _CLIENTS[s]) for t, s in zip(texts_all, df["source"].astype(str)) if s in _CLIENTS]
    else:
        years = (np.asarray(df["created_at"], dtype=float) / (365.2425 * 86400) + 1970).astype(int)
        bins = {2009: "2009-2012", 2010: "2009-2012", 2011: "2009-2012", 2012: "2009-2012", 2013: "2013",
                2014: "2014-2015", 2015: "2014-2015", 2016: "2016-2018", 2017: "2016-2018", 2018: "2016-2018"}
        pairs = [(t, bins[int(y)]) for t, y in zip(texts_all, years) if int(y) in bins]
    pairs = [(t, l) for t, l in pairs if t and t != "URL"]
    return _dedupe([p[0] for p in pairs], [p[1] for p in pairs])


def load_chatterbot(root: str | Path | None = None) -> Corpus:
    """chatterbot-corpus English conversations: every utterance, label = topic file (21).

    ``root`` is accepted for a uniform signature; the data ship inside the PyPI package.
    """
    import yaml

    try:
        import chatterbot_corpus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("chatterbot-corpus is not installed: pip install chatterbot-corpus") from exc
    d = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    texts: list[str] = []
    labels: list[str] = []
    for path in sorted(d.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            for utt in conv if isinstance(conv, list) else [conv]:
                if isinstance(utt, str) and utt.strip():
                    texts.append(utt.strip())
                    labels.append(path.stem)
    return _dedupe(texts, labels)


def load_bing_lexicon(root: str | Path | None = None) -> Corpus:
    """Bing (Hu & Liu) opinion lexicon from tidytext ``sentiments``: word, ``positive``/``negative``."""
    df = read_r_dataset("tidytext", "sentiments", root)
    return _dedupe([str(w) for w in df["word"]], [str(s) for s in df["sentiment"]])


def top_classes(corpus: Corpus, k: int, prefix: str = "", skip: int = 0) -> Corpus:
    """Only the examples of the ``k`` most frequent labels after the ``skip`` most frequent (among
    labels starting with ``prefix``; ties by label name): a coarser task on the same texts."""
    texts, labels = corpus
    counts: dict[str, int] = {}
    for lab in labels:
        if lab.startswith(prefix):
            counts[lab] = counts.get(lab, 0) + 1
    keep = set(sorted(counts, key=lambda c: (-counts[c], c))[skip:skip + k])
    idx = [i for i, lab in enumerate(labels) if lab in keep]
    return [texts[i] for i in idx], [labels[i] for i in idx]


#: Short name -> loader(root) for every corpus / label set.
DATASETS: dict[str, Callable[..., Corpus]] = {
    "wordnet_supersense": lambda root=None: load_wordnet(root, "supersense"),
    "wordnet_pos": lambda root=None: load_wordnet(root, "pos"),
    "fortunes": load_fortunes,
    "austen": load_austen,
    "fine_foods": load_fine_foods,
    "trump_client": lambda root=None: load_trump_tweets(root, "client"),
    "trump_period": lambda root=None: load_trump_tweets(root, "period"),
    "chatterbot": load_chatterbot,
    "bing_lexicon": load_bing_lexicon,
    # coarser label sets (the most frequent topics / noun supersenses)
    "fortunes_top4": lambda root=None: top_classes(load_fortunes(root), 4),
    "wordnet_nouns_top6": lambda root=None: top_classes(load_wordnet(root, "supersense"), 6, prefix="noun."),
    "chatterbot_top4": lambda root=None: top_classes(load_chatterbot(root), 4),
    "fortunes_next4": lambda root=None: top_classes(load_fortunes(root), 4, skip=4),
    "wordnet_verbs_top6": lambda root=None: top_classes(load_wordnet(root, "supersense"), 6, prefix="verb."),
    "wordnet_adj_adv": lambda root=None: top_classes(load_wordnet(root, "supersense"), 3, prefix="ad"),
}

#: Short dataset name -> corpus key of ``LICENCES`` / ``DEBIAN_PACKAGES``.
DATASET_CORPUS: dict[str, str] = {
    "wordnet_supersense": "wordnet", "wordnet_pos": "wordnet", "fortunes": "fortunes",
    "austen": "austen", "fine_foods": "fine_foods", "trump_client": "trump_tweets",
    "trump_period": "trump_tweets", "chatterbot": "chatterbot", "bing_lexicon": "bing_lexicon",
    "fortunes_top4": "fortunes", "wordnet_nouns_top6": "wordnet", "chatterbot_top4": "chatterbot",
    "fortunes_next4": "fortunes", "wordnet_verbs_top6": "wordnet", "wordnet_adj_adv": "wordnet",
}


def load(name: str, root: str | Path | None = None) -> Corpus:
    """Load the dataset ``name`` (a key of ``DATASETS``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](root)


# ----------------------------------------------------------------------------------- fetch
_PROBE = {
    "wordnet-base": "usr/share/wordnet/data.noun",
    "fortunes": "usr/share/games/fortunes/cookie",
    "r-cran-janeaustenr": f"{_R_LIB}/janeaustenr/data/Rdata.rdx",
    "r-cran-modeldata": f"{_R_LIB}/modeldata/data/Rdata.rdx",
    "r-cran-dslabs": f"{_R_LIB}/dslabs/data/Rdata.rdx",
    "r-cran-tidytext": f"{_R_LIB}/tidytext/data/Rdata.rdx",
}


def fetch_all(root: str | Path | None = None, *, verbose: bool = True) -> dict[str, str]:
    """Make every Debian corpus available under ``root``: ``apt-get download`` + ``dpkg-deb -x``.

    Packages already unpacked under ``root`` or installed system-wide are skipped. The ``.deb``
    files are kept in ``root/.debs``. Returns ``{package: "present" | "system" | "fetched"}``.
    Runs ``apt-get update`` once if a download fails (stale package lists).
    """
    base = Path(root) if root is not None else default_root()
    base.mkdir(parents=True, exist_ok=True)
    debs = base / ".debs"
    debs.mkdir(exist_ok=True)
    status: dict[str, str] = {}
    updated = False
    for pkg, probe in _PROBE.items():
        if (base / probe).exists():
            status[pkg] = "present"
            continue
        if (Path("/") / probe).exists():
            status[pkg] = "system"
            continue
        existing = sorted(debs.glob(f"{pkg}_*.deb"))
        if not existing:
            cmd = ["apt-get", "download", pkg]
            res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if res.returncode != 0 and not updated:
                subprocess.run(["apt-get", "update"], capture_output=True, text=True)
                updated = True
                res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if res.returncode != 0:
                raise ValueError(f"`apt-get download {pkg}` failed: {res.stderr.strip()[-400:]}")
            existing = sorted(debs.glob(f"{pkg}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(existing[-1]), str(base)], check=True)
        status[pkg] = "fetched"
        if verbose:
            print(f"fetched {pkg} -> {base}")
    return status


# -------------------------------------------------------------------------------- sampling
def _check_pair(texts: Sequence[str], labels: Sequence[str] | np.ndarray) -> tuple[list[str], np.ndarray]:
    texts = list(texts)
    labels_arr = np.asarray([str(l) for l in labels], dtype=object)
    if len(texts) != len(labels_arr):
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels_arr)}")
    return texts, labels_arr


def _take(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> Corpus:
    idx = np.sort(idx)
    return [texts[i] for i in idx], [str(labels[i]) for i in idx]


def filter_min_count(texts: Sequence[str], labels: Sequence[str], min_count: int) -> Corpus:
    """Keep only the classes with at least ``min_count`` examples (order preserved)."""
    texts, labels_arr = _check_pair(texts, labels)
    classes, counts = np.unique(labels_arr.astype(str), return_counts=True)
    keep = set(classes[counts >= min_count])
    idx = np.flatnonzero([l in keep for l in labels_arr])
    return _take(texts, labels_arr, idx)


def sample_per_class(texts: Sequence[str], labels: Sequence[str], n_per_class: int, seed: int = 0) -> Corpus:
    """At most ``n_per_class`` examples of every class, chosen uniformly with ``seed``."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    texts, labels_arr = _check_pair(texts, labels)
    rng = np.random.default_rng(seed)
    parts = []
    for c in sorted(set(labels_arr)):
        members = np.flatnonzero(labels_arr == c)
        parts.append(rng.permutation(members)[:n_per_class])
    idx = np.concatenate(parts) if parts else np.zeros(0, int)
    return _take(texts, labels_arr, idx)


def _stratified_counts(labels_arr: np.ndarray, n: int) -> dict[str, int]:
    """Largest-remainder allocation of n draws proportional to class sizes (≥1 per class if possible)."""
    classes, counts = np.unique(labels_arr.astype(str), return_counts=True)
    quota = counts * (n / counts.sum())
    alloc = np.minimum(np.floor(quota).astype(int), counts)
    if n >= len(classes):
        alloc = np.maximum(alloc, np.minimum(1, counts))
    rest = n - alloc.sum()
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while rest > 0 and i < 10 * len(classes):
        c = order[i % len(classes)]
        if alloc[c] < counts[c]:
            alloc[c] += 1
            rest -= 1
        i += 1
    while rest < 0:  # the ≥1-per-class floor overshot: trim the largest classes
        c = int(np.argmax(alloc))
        alloc[c] -= 1
        rest += 1
    return dict(zip(classes.tolist(), alloc.tolist()))


def sample(texts: Sequence[str], labels: Sequence[str] | np.ndarray, max_n: int, seed: int = 0,
           stratified: bool = True) -> Corpus:
    """A seeded subsample of at most ``max_n`` examples (class proportions kept if ``stratified``)."""
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    texts, labels_arr = _check_pair(texts, labels)
    if len(texts) <= max_n:
        return list(texts), [str(l) for l in labels_arr]
    rng = np.random.default_rng(seed)
    if not stratified:
        return _take(texts, labels_arr, rng.permutation(len(texts))[:max_n])
    alloc = _stratified_counts(labels_arr, max_n)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels_arr == c))[:k] for c, k in alloc.items()])
    return _take(texts, labels_arr, idx)


def train_test_split(
    texts: Sequence[str], labels: Sequence[str], n_train: int, n_test: int, seed: int = 0
) -> tuple[Corpus, Corpus]:
    """Disjoint, stratified, seeded (train, test) of at most n_train / n_test examples."""
    texts, labels_arr = _check_pair(texts, labels)
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be >= 1")
    test_t, test_l = sample(texts, labels_arr, n_test, seed=seed)
    test_set = set(test_t)
    rest = np.flatnonzero([t not in test_set for t in texts])
    rest_t, rest_l = _take(texts, labels_arr, rest)
    train = sample(rest_t, rest_l, n_train, seed=seed + 1)
    return train, (test_t, test_l)


def summary(root: str | Path | None = None) -> dict[str, dict]:
    """``{name: {"n", "n_classes", "licence"}}`` for every dataset that loads."""
    out = {}
    for name in DATASETS:
        t, l = load(name, root)
        out[name] = {"n": len(t), "n_classes": len(set(l)), "licence": LICENCES[DATASET_CORPUS[name]]}
    return out


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["fetch", "summary"])
    ap.add_argument("--root", default=None)
    args = ap.parse_args(argv)
    if args.command == "fetch":
        print(json.dumps(fetch_all(args.root), indent=1))
    else:
        for name, info in summary(args.root).items():
            print(f"{name:20s} n={info['n']:6d} classes={info['n_classes']:3d}  {info['licence']}")


if __name__ == "__main__":
    _main()
