"""``tfidf-svd`` encoder kind: the no-pretraining ("no transfer") baseline.

Embedding = TruncatedSVD (LSA) of the TF-IDF matrix of word uni+bigrams, fitted on the very
texts being encoded (scikit-learn ``TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2),
min_df=1)`` then ``TruncatedSVD(n_components=dim, random_state=0)``), rows L2-normalised.
It uses no pretrained weights, so its score is the baseline a transferred encoder should beat.

Deterministic: the same texts give the same features (fixed ``random_state``; the SVD sign
is fixed so the largest-magnitude loading of each component is positive). When the texts
support fewer than ``dim`` components (rank <= min(n_texts, vocabulary) - 1), the remaining
columns are zero so the output width is always ``dim``.

Cost: O(n * tokens) to vectorise, randomized SVD O(n * V_nnz * dim); fine up to ~1e5 texts.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.encoders.base import EncoderSpec, ProgressFn, check_texts

DEFAULT_DIM = 256


class TfidfSvdEncoder:
    """TF-IDF + truncated SVD fitted transductively on the texts to encode."""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self._dim = int(spec.dim or spec.options.get("dim", DEFAULT_DIM))
        if self._dim < 1:
            raise ValueError(f"encoder {spec.name!r}: dim must be >= 1, got {self._dim}")
        self.max_features = int(spec.options.get("max_features", 50_000))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_params(self) -> int:
        return 0  # nothing pretrained

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 0, progress: ProgressFn | None = None
    ) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = check_texts(texts)
        n = len(texts)
        out = np.zeros((n, self._dim), dtype=np.float32)
        if n == 0:
            if progress:
                progress(1.0)
            return out
        vec = TfidfVectorizer(
            sublinear_tf=True, ngram_range=(1, 2), min_df=1, max_features=self.max_features,
            dtype=np.float64,
        )
        try:
            tfidf = vec.fit_transform(texts)
        except ValueError:  # empty vocabulary: only stop-words/blank texts -> all zeros
            if progress:
                progress(1.0)
            return out
        if progress:
            progress(0.3)
        k = min(self._dim, n - 1, tfidf.shape[1] - 1)
        if k >= 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=0)
            z = svd.fit_transform(tfidf)
            # deterministic sign: the largest |loading| of each component is positive
            comps = svd.components_
            signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
            signs[signs == 0] = 1.0
            z *= signs
        else:  # one text or a one-word vocabulary: the (dense) tf-idf itself
            z = tfidf.toarray()[:, : self._dim]
            k = z.shape[1]
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
        out[:, :k] = z
        if progress:
            progress(1.0)
        return out
