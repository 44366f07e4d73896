"""Embedding-space maps (Schulte et al., EMNLP 2024) and ESM-LogME."""
from __future__ import annotations

import json
import math
import struct
import zipfile

import numpy as np
import pytest

import estimators
from estimators.esm import EmbeddingSpaceMap, esm_logme


def _linear_pair(n=600, d_in=12, d_out=12, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in))
    A = rng.normal(size=(d_out, d_in)) / math.sqrt(d_in)
    c = rng.normal(size=d_out)
    Y = X @ A.T + c + noise * rng.normal(size=(n, d_out))
    return X, Y, A, c


# ------------------------------------------------------------------ lstsq
@pytest.mark.parametrize("d_in,d_out", [(12, 12), (10, 7), (5, 9)])
def test_lstsq_recovers_known_map_exactly(d_in, d_out):
    X, Y, A, c = _linear_pair(d_in=d_in, d_out=d_out)
    esm = EmbeddingSpaceMap().fit(X, Y, method="lstsq")
    assert (esm.dim_in, esm.dim_out) == (d_in, d_out)
    np.testing.assert_allclose(esm.weight, A, atol=1e-8)
    np.testing.assert_allclose(esm.bias, c, atol=1e-8)
    fit = esm.score_fit(X, Y)
    assert fit["mse"] < 1e-15 and fit["r2"] > 1 - 1e-12 and fit["cosine"] > 1 - 1e-12


def test_lstsq_matches_normal_equations_with_noise():
    X, Y, _, _ = _linear_pair(noise=0.3, seed=3)
    esm = EmbeddingSpaceMap().fit(X, Y, method="lstsq", ridge=0.0)
    Xa = np.hstack([X, np.ones((X.shape[0], 1))])
    coef = np.linalg.solve(Xa.T @ Xa, Xa.T @ Y)  # (d+1, d_out)
    np.testing.assert_allclose(esm.weight, coef[:-1].T, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(esm.bias, coef[-1], rtol=1e-9, atol=1e-10)


def test_lstsq_rank_deficient_gives_min_norm_interpolant():
    # n < d: infinitely many exact fits; the minimum-norm one is pinv-based and finite.
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(8, 20)), rng.normal(size=(8, 20))
    esm = EmbeddingSpaceMap().fit(X, Y, method="lstsq")
    np.testing.assert_allclose(esm.transform(X), Y, atol=1e-8)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    np.testing.assert_allclose(esm.weight, (np.linalg.pinv(Xc) @ Yc).T, atol=1e-8)


def test_lstsq_weight_decay_is_ridge():
    X, Y, _, _ = _linear_pair(noise=0.5, seed=4)
    lam_per_n = 0.7
    esm = EmbeddingSpaceMap().fit(X, Y, method="lstsq", ridge=0.0, weight_decay=lam_per_n)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Wt = np.linalg.solve(Xc.T @ Xc + lam_per_n * X.shape[0] * np.eye(X.shape[1]), Xc.T @ Yc)
    np.testing.assert_allclose(esm.weight, Wt.T, rtol=1e-9, atol=1e-12)
    # shrinkage: smaller weights than the unregularised fit
    plain = EmbeddingSpaceMap().fit(X, Y, method="lstsq")
    assert np.linalg.norm(esm.weight) < np.linalg.norm(plain.weight)


# ------------------------------------------------------------------ Adam
def test_adam_fits_noiseless_map():
    X, Y, A, c = _linear_pair(n=1000, d_in=8, d_out=8, seed=5)
    esm = EmbeddingSpaceMap().fit(X, Y, lr=1e-2, epochs=30, batch_size=32, seed=0)
    fit = esm.score_fit(X, Y)
    assert fit["r2"] > 0.99
    assert fit["cosine"] > 0.99
    assert np.abs(esm.weight - A).max() < 0.05
    losses = esm.history["loss"]
    assert len(losses) == 30 and losses[-1] < 0.01 * losses[0]


def test_adam_paper_defaults_reduce_loss_and_are_seeded():
    X, Y, _, _ = _linear_pair(n=300, d_in=16, d_out=16, seed=6)
    a = EmbeddingSpaceMap().fit(X, Y)  # lr 1e-3, 10 epochs, batch 32
    b = EmbeddingSpaceMap().fit(X, Y)
    c = EmbeddingSpaceMap().fit(X, Y, seed=1)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.allclose(a.weight, c.weight)
    assert len(a.history["loss"]) == 10
    assert a.history["loss"][-1] < a.history["loss"][0]
    assert json.loads(a.metadata["fit_params"])["lr"] == 1e-3


def _numpy_init_and_orders(seed, n, d_in, d_out, epochs):
    """The same random stream EmbeddingSpaceMap.fit draws: init W, b, then one permutation per epoch."""
    rng = np.random.default_rng(seed)
    bound = 1 / math.sqrt(d_in)
    W = rng.uniform(-bound, bound, size=(d_out, d_in))
    b = rng.uniform(-bound, bound, size=d_out)
    return W, b, [rng.permutation(n) for _ in range(epochs)]


@pytest.mark.parametrize("weight_decay,schedule", [(0.0, "linear"), (0.01, "linear"), (0.0, "constant")])
def test_adam_matches_torch_adamw_reference_trainer(weight_decay, schedule):
    """Same maths as the reference trainer: nn.Linear + MSELoss + AdamW + linear decay + clip 1.0."""
    torch = pytest.importorskip("torch")
    n, d, epochs, bs, lr = 70, 6, 3, 16, 5e-2
    X, Y, _, _ = _linear_pair(n=n, d_in=d, d_out=d, seed=7)
    Y = Y * 5  # large gradients, so clipping is active in the first steps
    ours = EmbeddingSpaceMap().fit(X, Y, lr=lr, epochs=epochs, batch_size=bs,
                                   weight_decay=weight_decay, seed=3, schedule=schedule)

    W0, b0, orders = _numpy_init_and_orders(3, n, d, d, epochs)
    lin = torch.nn.Linear(d, d).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W0))
        lin.bias.copy_(torch.from_numpy(b0))
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    steps = -(-n // bs) * epochs
    factor = (lambda s: max(0.0, (steps - s) / steps)) if schedule == "linear" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    clipped = 0
    for order in orders:
        for s in range(0, n, bs):
            idx = torch.from_numpy(order[s:s + bs])
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(lin(Xt[idx]), Yt[idx])
            loss.backward()
            clipped += float(torch.nn.utils.clip_grad_norm_(lin.parameters(), 1.0)) > 1.0
            opt.step()
            sched.step()
    assert clipped > 0
    np.testing.assert_allclose(ours.weight, lin.weight.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.bias, lin.bias.detach().numpy(), rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ transform / metrics
def test_transform_and_given_arrays():
    rng = np.random.default_rng(8)
    W, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    esm = EmbeddingSpaceMap(W, b)
    X = rng.normal(size=(4, 5))
    np.testing.assert_allclose(esm.transform(X), X @ W.T + b)
    np.testing.assert_allclose(esm(X), esm.transform(X))
    assert esm.transform(X).dtype == np.float64
    np.testing.assert_allclose(EmbeddingSpaceMap(W).bias, np.zeros(3))


def test_score_fit_values():
    X, Y, _, _ = _linear_pair(n=50, d_in=4, d_out=4)
    esm = EmbeddingSpaceMap(np.zeros((4, 4)), Y.mean(0))  # predicts the mean => R^2 = 0
    fit = esm.score_fit(X, Y)
    assert fit["r2"] == pytest.approx(0.0, abs=1e-12)
    assert fit["mse"] == pytest.approx(((Y - Y.mean(0)) ** 2).mean())


# ------------------------------------------------------------------ storage
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_round_trip(tmp_path, suffix):
    X, Y, _, _ = _linear_pair(n=200, d_in=6, d_out=4)
    esm = EmbeddingSpaceMap(metadata={"source": "sst2", "encoder": "minilm"}).fit(X, Y, method="lstsq")
    path = esm.save(tmp_path / f"map{suffix}")
    assert path.exists() and path.name == f"map{suffix}"
    back = EmbeddingSpaceMap.load(path)
    np.testing.assert_array_equal(back.weight, esm.weight)
    np.testing.assert_array_equal(back.bias, esm.bias)
    assert back.weight.dtype == np.float64
    assert (back.dim_in, back.dim_out, back.method) == (6, 4, "lstsq")
    assert back.metadata["source"] == "sst2" and back.metadata["format_version"] == "1"
    np.testing.assert_array_equal(back.transform(X), esm.transform(X))


def test_saved_files_contain_no_pickle(tmp_path):
    esm = EmbeddingSpaceMap(np.eye(3), np.arange(3.0))
    st = esm.save(tmp_path / "m.safetensors")
    raw = st.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])  # safetensors = JSON header + raw little-endian buffers
    assert header["weight"]["dtype"] == "F64" and header["__metadata__"]["dim_in"] == "3"
    assert len(raw) == 8 + hlen + 8 * (9 + 3)
    npz = esm.save(tmp_path / "m.npz")
    with zipfile.ZipFile(npz) as z:
        assert sorted(z.namelist()) == ["bias.npy", "metadata_json.npy", "weight.npy"]
    with np.load(npz, allow_pickle=False) as z:  # would raise on any object (pickled) array
        assert all(z[k].dtype != object for k in z.files)


def test_float32_storage(tmp_path):
    rng = np.random.default_rng(9)
    esm = EmbeddingSpaceMap(rng.normal(size=(4, 4)), rng.normal(size=4))
    back = EmbeddingSpaceMap.load(esm.save(tmp_path / "m.safetensors", dtype="float32"))
    assert back.weight.dtype == np.float64
    np.testing.assert_allclose(back.weight, esm.weight, rtol=1e-6)


def test_arrays_round_trip_and_checks():
    esm = EmbeddingSpaceMap(np.eye(2) * 2, np.ones(2))
    d = esm.to_arrays()
    assert d["metadata"]["dim_out"] == "2"
    back = EmbeddingSpaceMap.from_arrays(d)
    np.testing.assert_array_equal(back.weight, esm.weight)
    d["metadata"]["dim_in"] = "5"
    with pytest.raises(ValueError, match="dim_in"):
        EmbeddingSpaceMap.from_arrays(d)
    with pytest.raises(ValueError, match="weight"):
        EmbeddingSpaceMap.from_arrays({"bias": np.ones(2)})


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="no ESM file"):
        EmbeddingSpaceMap.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(ValueError):
        EmbeddingSpaceMap.load(junk)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": np.eye(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="format"):
        EmbeddingSpaceMap.load(other)


# ------------------------------------------------------------------ bad input
def test_bad_shapes_and_values_raise():
    X, Y, _, _ = _linear_pair(n=20, d_in=3, d_out=3)
    with pytest.raises(ValueError, match="rows"):
        EmbeddingSpaceMap().fit(X, Y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingSpaceMap().fit(X[:, 0], Y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingSpaceMap().fit(Xn, Y)
    with pytest.raises(ValueError, match="method"):
        EmbeddingSpaceMap().fit(X, Y, method="sgd")
    for kw in ({"lr": 0}, {"epochs": 0}, {"batch_size": 2.5}, {"weight_decay": -1}, {"schedule": "cosine"}):
        with pytest.raises(ValueError):
            EmbeddingSpaceMap().fit(X, Y, **kw)
    with pytest.raises(ValueError, match="bias"):
        EmbeddingSpaceMap(np.eye(3), np.ones(4))
    with pytest.raises(ValueError, match="not fitted"):
        EmbeddingSpaceMap().transform(X)
    with pytest.raises(ValueError, match="not fitted"):
        _ = EmbeddingSpaceMap().dim_in
    esm = EmbeddingSpaceMap(np.eye(3))
    with pytest.raises(ValueError, match="features"):
        esm.transform(np.ones((2, 4)))


def test_divergent_fit_raises():
    X, Y, _, _ = _linear_pair(n=40, d_in=3, d_out=3)
    with pytest.raises(ValueError, match="non-finite"):
        EmbeddingSpaceMap().fit(X * 1e300, Y, method="lstsq")


# ------------------------------------------------------------------ ESM-LogME
def _labelled(n=120, d=6, seed=10):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    X = rng.normal(size=(n, d)) + y[:, None] * 0.8
    return X, y


def test_esm_logme_equals_logme_of_mapped_features(tmp_path):
    logme_mod = pytest.importorskip("estimators.logme")
    X, y = _labelled()
    rng = np.random.default_rng(11)
    esm = EmbeddingSpaceMap(rng.normal(size=(6, 6)), rng.normal(size=6))
    expected = logme_mod.logme(X @ esm.weight.T + esm.bias, y)
    assert esm_logme(X, y, esm=esm) == pytest.approx(expected, rel=1e-12)
    path = esm.save(tmp_path / "m.safetensors")
    assert estimators.score("esm_logme", X, y, esm=path) == pytest.approx(expected, rel=1e-12)
    assert estimators.score("esm_logme", X, y, esm=str(path)) == pytest.approx(expected, rel=1e-12)
    assert estimators.score("esm_logme", X, y, esm=esm.to_arrays()) == pytest.approx(expected, rel=1e-12)
    # identity map == plain LogME
    ident = EmbeddingSpaceMap(np.eye(6), np.zeros(6))
    assert esm_logme(X, y, esm=ident) == pytest.approx(logme_mod.logme(X, y), rel=1e-12)


def test_esm_logme_passes_regression_through():
    logme_mod = pytest.importorskip("estimators.logme")
    rng = np.random.default_rng(12)
    X = rng.normal(size=(80, 5))
    t = X @ rng.normal(size=5) + 0.1 * rng.normal(size=80)
    esm = EmbeddingSpaceMap(np.eye(5) * 2.0, np.ones(5))
    expected = logme_mod.logme(esm.transform(X), t, regression=True)
    assert estimators.score("esm_logme", X, t, esm=esm, regression=True) == pytest.approx(expected, rel=1e-12)


def test_esm_logme_bad_input():
    X, y = _labelled()
    with pytest.raises(ValueError, match="esm="):
        estimators.score("esm_logme", X, y)
    with pytest.raises(ValueError, match="expects 4"):
        esm_logme(X, y, esm=EmbeddingSpaceMap(np.eye(4)))
    with pytest.raises(ValueError, match="EmbeddingSpaceMap"):
        esm_logme(X, y, esm=42)
    with pytest.raises(ValueError, match="not fitted"):
        esm_logme(X, y, esm=EmbeddingSpaceMap())
    assert estimators.info("esm_logme").needs == "esm"


@pytest.mark.parametrize("name", ["etran_lda", "hscore_shrinkage"])
def test_esm_variants_equal_the_estimator_on_mapped_features(name, tmp_path):
    X, y = _labelled()
    rng = np.random.default_rng(13)
    esm = EmbeddingSpaceMap(rng.normal(size=(6, 6)), rng.normal(size=6))
    expected = estimators.score(name, esm.transform(X), y)
    path = esm.save(tmp_path / "m.safetensors")
    assert estimators.score(f"esm_{name}", X, y, esm=esm) == pytest.approx(expected, rel=1e-12)
    assert estimators.score(f"esm_{name}", X, y, esm=path) == pytest.approx(expected, rel=1e-12)
    info = estimators.info(f"esm_{name}")
    assert info.needs == "esm" and info.higher_is_better == estimators.info(name).higher_is_better
    with pytest.raises(ValueError, match=f"esm_{name} needs esm="):
        estimators.score(f"esm_{name}", X, y)
    with pytest.raises(ValueError, match="expects 4"):
        estimators.score(f"esm_{name}", X, y, esm=EmbeddingSpaceMap(np.eye(4)))
