"""Encoders with the real packaged weights (MiniLM, GloVe, model2vec distillation): no downloads."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.encoders import registry
from app.encoders.base import Encoder, EncoderSpec
from app.encoders.registry import BASE_ENCODER, catalogue, get_encoder

TEXTS = [
    "A cat is sitting on the mat.",
    "A kitten rests on a small rug in the living room, purring quietly.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "ok",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the barn door.",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_catalogue_entries():
    specs = {s.name: s for s in catalogue()}
    assert {"minilm-l6", "model2vec-minilm", "glove-6b-50d", "tfidf-svd"} <= set(specs)
    assert BASE_ENCODER in specs and specs[BASE_ENCODER].kind == "transformers"
    # every built-in kind has a catalogue entry; sentence-transformers / torchscript come only from user models
    assert {s.kind for s in specs.values()} >= set(registry.KINDS) - {"sentence-transformers", "torchscript"}
    for s in specs.values():
        assert s.dim and s.dim > 0 and s.licence and s.params is not None
    assert registry.get_spec("glove-6b-50d").dim == 50
    with pytest.raises(ValueError, match="unknown encoder"):
        registry.get_spec("nope")


@pytest.fixture(scope="module")
def minilm():
    return get_encoder("minilm-l6")


def test_minilm_shapes_norms_and_semantics(minilm):
    assert isinstance(minilm, Encoder)
    assert minilm.dim == 384 and minilm.n_params == registry.get_spec("minilm-l6").params
    seen = []
    X = minilm.encode(TEXTS, batch_size=2, progress=seen.append)
    assert X.shape == (len(TEXTS), 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    sim = X @ X.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # cat ~ kitten, not stock markets
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 3


def test_minilm_dynamic_padding_matches_unbatched(minilm):
    # length-sorted batches with per-batch padding must give the per-text embeddings
    batched = minilm.encode(TEXTS, batch_size=4)
    single = np.vstack([minilm.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm.spec.path, device="cpu")
    ref = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.encode(TEXTS), ref, atol=1e-5)


def test_transformers_errors():
    with pytest.raises(ValueError, match="cannot load transformers model"):
        get_encoder("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("not-a-registered-name")
    enc = get_encoder("tfidf-svd")
    with pytest.raises(ValueError, match="single string"):
        enc.encode("a string, not a list")
    with pytest.raises(ValueError, match="strings"):
        enc.encode(["ok", 3])


def test_glove_average_and_oov():
    from app.encoders.word_vectors import tokenize

    enc = get_encoder("glove-6b-50d")
    assert enc.dim == 50
    assert tokenize("John's car, isn't it? 3.14") == ["john", "'s", "car", ",", "is", "n't", "it", "?", "3.14"]
    assert all(t in enc.vocab for t in tokenize("John's car, isn't it? 3.14"))
    X = enc.encode(["The cat", "qwzxv blorptk", "", "the qwzxv cat"])
    v = enc.vectors
    expected = (v[enc.vocab["the"]].astype(np.float64) + v[enc.vocab["cat"]]) / 2
    np.testing.assert_allclose(X[0], expected, rtol=1e-5, atol=1e-6)
    assert not X[1].any() and not X[2].any()  # only OOV / empty -> zero vector
    np.testing.assert_allclose(X[3], X[0], rtol=1e-5, atol=1e-6)  # OOV tokens are skipped


def _mapped_rss_kb(path_end: str) -> int:
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = line.rstrip().endswith(path_end)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_glove_unmaps_the_vector_pages_an_encode_touched():
    import os

    from app.encoders.word_vectors import EMB_FILE

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("no /proc here")
    enc = get_encoder("glove-6b-50d")
    rows = np.array(enc.vectors[::97])  # copy: touch ~4k rows spread over the file: pages mapped in
    assert rows.shape[1] == 50 and _mapped_rss_kb(EMB_FILE) > 1000
    words = list(enc.vocab)[:: 50]
    X = enc.encode([" ".join(words[i:i + 20]) for i in range(0, len(words), 20)])
    assert np.isfinite(X).all() and X.any()
    assert _mapped_rss_kb(EMB_FILE) < 64  # the vectors stay readable (page cache), unmapped from this process
    np.testing.assert_allclose(enc.encode([words[3]])[0], enc.vectors[enc.vocab[words[3]]], rtol=1e-6)


def test_tfidf_svd_deterministic_and_padded():
    enc = get_encoder("tfidf-svd")
    texts = [f"document {i} about {'cats' if i % 2 else 'dogs'} and topic {i % 5}" for i in range(40)]
    A = enc.encode(texts)
    B = enc.encode(list(texts))
    assert A.shape == (40, 256) and A.dtype == np.float32
    np.testing.assert_array_equal(A, B)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0, atol=1e-5)
    assert not A[:, 39:].any()  # rank <= n - 1 components; the rest is zero padding
    assert enc.encode([]).shape == (0, 256)


def test_registry_cache_is_shared_and_bounded():
    a = get_encoder("glove-6b-50d")
    assert get_encoder("glove-6b-50d") is a

    from app.core.lru import LRU

    lru = LRU(2)
    calls = []

    def loader(tag):
        def load():
            calls.append(tag)
            time.sleep(0.05)
            return object()
        return load

    got = []
    threads = [threading.Thread(target=lambda: got.append(lru.get(("x",), loader("x")))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["x"] and all(g is got[0] for g in got)  # loaded once under contention
    lru.get(("y",), loader("y"))
    lru.get(("x",), loader("x"))  # touch x: y becomes least recently used
    lru.get(("z",), loader("z"))
    assert set(lru.keys()) == {("x",), ("z",)} and calls == ["x", "y", "z"]


def test_register_custom_spec(tmp_path):
    spec = EncoderSpec(name="tfidf-64", kind="tfidf-svd", dim=64, params=0, licence="BSD-3-Clause")
    registry.register(spec)
    try:
        assert get_encoder("tfidf-64").dim == 64
        with pytest.raises(ValueError, match="unknown kind"):
            registry.register(EncoderSpec(name="bad", kind="magic"))
    finally:
        registry._all_specs().pop("tfidf-64", None)


def test_model2vec_static_model_dir(tmp_path):
    """The model2vec kind on a saved static model: MiniLM's own input token embeddings."""
    from model2vec import StaticModel
    from safetensors import safe_open
    from tokenizers import Tokenizer

    from app.encoders.model2vec_encoder import Model2VecEncoder

    src = registry.minilm_path()
    with safe_open(f"{src}/model.safetensors", framework="numpy") as f:
        vectors = f.get_tensor("embeddings.word_embeddings.weight")
    config = {"model_type": "model2vec", "normalize": True, "hidden_dim": int(vectors.shape[1])}
    StaticModel(vectors, Tokenizer.from_file(f"{src}/tokenizer.json"), config=config, normalize=True).save_pretrained(
        str(tmp_path / "static")
    )
    enc = Model2VecEncoder(EncoderSpec(name="m2v-static", kind="model2vec", path=str(tmp_path / "static")))
    assert enc.dim == 384 and enc.n_params == vectors.size and enc.model_dir == tmp_path / "static"
    seen = []
    X = enc.encode(TEXTS, batch_size=1, progress=seen.append)
    assert X.shape == (len(TEXTS), 384) and X.dtype == np.float32 and seen[-1] == 1.0
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    assert (X @ X.T)[0, 1] > (X @ X.T)[0, 2]
    np.testing.assert_allclose(enc.encode(TEXTS[::-1])[::-1], X, atol=1e-6)  # order-independent
    with pytest.raises(ValueError, match="neither"):
        Model2VecEncoder(EncoderSpec(name="m2v-bad", kind="model2vec", path=str(tmp_path / "nothing")))


@pytest.mark.slow
@pytest.mark.slow
def test_model2vec_distils_once_and_caches(tmp_path, monkeypatch):
    """Distils the packaged MiniLM (~20 s on 2 idle cores), then reloads from the cache."""
    from app.encoders.model2vec_encoder import Model2VecEncoder, distilled_model_dir

    monkeypatch.setenv("TRANSFERRANK_DATA_DIR", str(tmp_path))
    spec = registry.get_spec("model2vec-minilm")
    enc = Model2VecEncoder(spec)
    assert enc.model_dir == distilled_model_dir(spec) and enc.model_dir.is_relative_to(tmp_path)
    X = enc.encode(TEXTS, batch_size=2, progress=lambda p: None)
    assert X.shape == (len(TEXTS), 256) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    assert (X @ X.T)[0, 1] > (X @ X.T)[0, 2]

    import model2vec.distill

    def boom(*a, **k):
        raise AssertionError("must not distil twice")

    monkeypatch.setattr(model2vec.distill, "distill", boom)
    again = Model2VecEncoder(spec)  # from the cache
    np.testing.assert_allclose(again.encode(TEXTS), X, atol=1e-6)
    # a saved static model directory can be used directly as the spec path
    direct = Model2VecEncoder(EncoderSpec(name="m2v-dir", kind="model2vec", path=str(enc.model_dir)))
    np.testing.assert_allclose(direct.encode(TEXTS[:2]), X[:2], atol=1e-6)
