"""ESM scores from the target's sufficient statistics equal the one-source estimators."""
from __future__ import annotations

import math

import numpy as np
import pytest

import estimators
import estimators.esm_stats as esm_stats
from estimators.esm import EmbeddingSpaceMap
from estimators.esm_stats import SUPPORTED, TargetStats, score_many, stack_esms

RTOL = 1e-6


def _target(n, d, C, seed=0, offset=0.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    rng.shuffle(y)
    centres = rng.normal(scale=0.6, size=(C, d))
    X = centres[y] + rng.normal(size=(n, d)) + offset
    return X, y


def _maps(S, d_in, d_out, seed=1):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(d_out, d_in)) / math.sqrt(d_in)
    W = base + 0.3 * rng.normal(size=(S, d_out, d_in)) / math.sqrt(d_in)
    b = rng.normal(size=(S, d_out))
    return W, b


def _reference(X, y, W, b, names=SUPPORTED, **kw):
    return np.array([[estimators.score(e, X, y, esm={"weight": W[s], "bias": b[s]}, **kw) for e in names]
                     for s in range(W.shape[0])])


@pytest.mark.parametrize("n,d_in,d_out,C", [(400, 24, 24, 3), (300, 16, 10, 5), (250, 10, 14, 2)])
def test_numpy_path_equals_one_source_estimators(n, d_in, d_out, C):
    X, y = _target(n, d_in, C)
    W, b = _maps(6, d_in, d_out)
    out = score_many(TargetStats.from_data(X, y), W, bias=b)
    assert out.shape == (6, 3)
    np.testing.assert_allclose(out, _reference(X, y, W, b), rtol=RTOL)


def test_fewer_rows_than_dims_uses_the_gram_of_the_rows():
    X, y = _target(18, 30, 3)
    W, b = _maps(4, 30, 30)
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, y), W, bias=b), _reference(X, y, W, b), rtol=RTOL)


def test_rank_deficient_map_falls_back_to_the_eigendecomposition():
    X, y = _target(300, 20, 4)
    W, b = _maps(3, 20, 20)
    W[1, :, 5:] = 0.0  # rank 5: LogME drops the null directions as the reference does
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, y), W, bias=b), _reference(X, y, W, b), rtol=RTOL)


def test_tridiagonal_path_equals_the_eigendecomposition():
    rng = np.random.default_rng(3)
    S, d_out, k, n = 6, 30, 25, 400
    Pt = rng.normal(size=(S, d_out, k)) * np.logspace(0, -3, k)  # condition numbers ~1e6
    z = rng.normal(size=(k, 4)) * 3.0
    y_sq = (z * z).sum(0) + rng.uniform(1, 5, size=4)
    got = esm_stats._logme_tridiagonal(Pt, z, y_sq, n, max(n, d_out))
    sigma, Q = np.linalg.eigh(np.swapaxes(Pt, 1, 2) @ Pt)
    ref, bad = esm_stats._logme_batch(esm_stats._Numpy(), sigma, None, np.swapaxes(Q, 1, 2) @ z, y_sq, n,
                                      max(n, d_out))
    assert not bad.any()
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_torch_path_on_cpu_equals_numpy():
    pytest.importorskip("torch")
    for n, d in ((300, 16), (12, 16)):
        X, y = _target(n, d, 3, seed=n)
        W, b = _maps(5, d, d)
        st = TargetStats.from_data(X, y)
        ref = _reference(X, y, W, b)
        np.testing.assert_allclose(score_many(st, W, bias=b, device="cpu", chunk_size=2), ref, rtol=RTOL)
    # d_out = 1: the pseudo-inverse path of the H-score and LogME's rank cut, in torch
    X, y = _target(200, 8, 3, seed=9)
    W, b = _maps(3, 8, 1, seed=10)
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, y), W, bias=b, device="cpu"),
                               _reference(X, y, W, b), rtol=RTOL)


def test_regression_targets_logme():
    X, _ = _target(300, 12, 2)
    rng = np.random.default_rng(5)
    Y = X[:, :2] @ rng.normal(size=(2, 2)) + rng.normal(size=(300, 2))
    W, b = _maps(4, 12, 12)
    st = TargetStats.from_data(X, Y, regression=True)
    ref = _reference(X, Y, W, b, names=["esm_logme"], regression=True)
    np.testing.assert_allclose(score_many(st, W, ["esm_logme"], bias=b), ref, rtol=RTOL)
    pytest.importorskip("torch")
    np.testing.assert_allclose(score_many(st, W, ["esm_logme"], bias=b, device="cpu"), ref, rtol=RTOL)
    with pytest.raises(ValueError, match="class labels"):
        score_many(st, W, ["esm_etran_lda"], bias=b)


def test_esm_objects_chunks_progress_and_column_order(tmp_path):
    X, y = _target(200, 8, 3)
    W, b = _maps(5, 8, 8)
    esms = [EmbeddingSpaceMap(W[i], b[i]) for i in range(5)]
    esms[2].save(tmp_path / "m.safetensors")
    esms[2] = str(tmp_path / "m.safetensors")
    seen = []
    out = score_many(TargetStats.from_data(X, y), esms, ["esm_hscore_shrinkage", "esm_logme"], chunk_size=2,
                     progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    np.testing.assert_allclose(out, _reference(X, y, W, b, names=["esm_hscore_shrinkage", "esm_logme"]), rtol=RTOL)
    Ws, bs = stack_esms(esms)
    np.testing.assert_allclose(Ws, W)


def test_stats_round_trip_through_arrays():
    X, y = _target(120, 6, 3)
    st = TargetStats.from_data(X, y)
    back = TargetStats.from_arrays(st.to_arrays())
    W, b = _maps(2, 6, 6)
    np.testing.assert_array_equal(score_many(back, W, bias=b), score_many(st, W, bias=b))


def test_labels_are_remapped_like_the_estimators():
    X, y = _target(150, 6, 3)
    names = np.array(["cat", "dog", "eel"])[y]
    W, b = _maps(2, 6, 6)
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, names), W, bias=b),
                               score_many(TargetStats.from_data(X, y), W, bias=b), rtol=1e-12)


def test_invalid_inputs_raise_value_errors():
    X, y = _target(100, 6, 3)
    st = TargetStats.from_data(X, y)
    W, b = _maps(2, 6, 6)
    with pytest.raises(ValueError, match="no statistics path"):
        score_many(st, W, ["logme"], bias=b)
    with pytest.raises(ValueError, match="7-dim inputs"):
        score_many(st, np.zeros((2, 6, 7)))
    with pytest.raises(ValueError, match="bias"):
        score_many(st, W, bias=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        score_many(st, W * np.nan, bias=b)
    with pytest.raises(ValueError, match="chunk_size"):
        score_many(st, W, bias=b, chunk_size=0)
    with pytest.raises(ValueError, match="device"):
        score_many(st, W, bias=b, device="no-such-device")
    with pytest.raises(ValueError):
        TargetStats.from_data(X, np.zeros(100))  # one class
    with pytest.raises(ValueError, match="different shapes"):
        stack_esms([EmbeddingSpaceMap(W[0], b[0]), EmbeddingSpaceMap(np.eye(6)[:5], np.zeros(5))])


def test_constant_map_gives_nan_where_logme_would_raise():
    X, y = _target(100, 6, 3)
    out = score_many(TargetStats.from_data(X, y), np.zeros((1, 6, 6)), ["esm_logme"], bias=np.zeros((1, 6)))
    assert np.isnan(out[0, 0])
    with pytest.raises(ValueError):
        estimators.score("esm_logme", X, y, esm={"weight": np.zeros((6, 6)), "bias": np.zeros(6)})


def test_lowrank_logme_at_full_rank_is_esm_logme():
    X, y = _target(300, 12, 3)
    W, b = _maps(4, 12, 12)
    st = TargetStats.from_data(X, y)
    np.testing.assert_allclose(esm_stats.logme_lowrank(st, W, rank=12, bias=b),
                               score_many(st, W, ["esm_logme"], bias=b)[:, 0], rtol=1e-8)
    low = esm_stats.logme_lowrank(st, W, rank=3, bias=b)
    assert low.shape == (4,) and np.isfinite(low).all()


def test_two_stage_with_everything_shortlisted_is_the_exhaustive_default():
    from estimators.ranking import rank_candidates

    X, y = _target(200, 10, 3)
    W, b = _maps(30, 10, 10, seed=4)
    st = TargetStats.from_data(X, y)
    names = [f"s{i:02d}" for i in range(30)]
    exact = score_many(st, W, bias=b)
    full = rank_candidates({names[i]: {"scores": dict(zip(("logme", "etran_lda", "hscore_shrinkage"), exact[i]))}
                            for i in range(30)}, np.zeros(2, dtype=int), kind="tasks")
    two = esm_stats.rank_two_stage(st, W, names, shortlist=30, bias=b)
    assert [r["name"] for r in two["ranking"]] == [r["name"] for r in full]
    np.testing.assert_allclose([r["score"] for r in two["ranking"]], [r["score"] for r in full], atol=1e-12)
    # a loader function (catalogue read a chunk at a time) gives the same ranking
    seen = []
    loaded = esm_stats.rank_two_stage(st, lambda idx: (seen.append(len(idx)) or (W[idx], b[idx])), names,
                                      shortlist=30, chunk_size=7, progress=lambda f: None)
    assert [r["name"] for r in loaded["ranking"]] == [r["name"] for r in full] and max(seen) <= 7


def test_two_stage_shortlist_keeps_the_best():
    X, y = _target(200, 10, 3)
    W, b = _maps(60, 10, 10, seed=5)
    st = TargetStats.from_data(X, y)
    two = esm_stats.rank_two_stage(st, W, shortlist=20, calibration=10, bias=b)
    assert len(two["ranking"]) == 20 and len(two["calibration"]) == 10
    assert not set(two["calibration"]) & set(two["shortlist"])
    with pytest.raises(ValueError, match="shortlist"):
        esm_stats.rank_two_stage(st, W, shortlist=0, bias=b)
    with pytest.raises(ValueError, match="names"):
        esm_stats.rank_two_stage(st, lambda idx: (W[idx], b[idx]))


def test_singular_target_scatter_with_more_rows_than_dims():
    # A column that is a combination of two others: Sc has a null direction although n > d, so
    # the target basis has r < d directions and W @ root adds the rows below its triangle.
    X, y = _target(300, 12, 4, seed=7)
    X[:, 5] = 0.5 * X[:, 1] - 2.0 * X[:, 2]
    W, b = _maps(4, 12, 9, seed=8)
    st = TargetStats.from_data(X, y)
    assert esm_stats._target_basis(st)["root"].shape == (12, 11)
    np.testing.assert_allclose(score_many(st, W, bias=b), _reference(X, y, W, b), rtol=RTOL)


def test_one_dimensional_map_takes_the_pseudo_inverse_and_eigh_paths():
    # d_out = 1: no Ledoit-Wolf shrinkage (the H-score's pseudo-inverse path) and a rank-1
    # F^T F (LogME's numerical-rank cut fails the inertia check and falls back to eigh).
    X, y = _target(200, 8, 3, seed=9)
    W, b = _maps(3, 8, 1, seed=10)
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, y), W, bias=b), _reference(X, y, W, b),
                               rtol=RTOL)


def test_hscore_dense_path_applies_the_reference_pseudo_inverse_ramp():
    from estimators.hscore import RCOND, trace_pinv_product

    X, y = _target(120, 6, 3, seed=11)
    st = TargetStats.from_data(X, y)
    t = esm_stats._prepare(esm_stats._Numpy(), st)
    rng = np.random.default_rng(12)
    d = 6
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = np.array([1.0, 0.3, 0.05, 1.5 * RCOND, 0.7 * RCOND, 0.0])  # one eigenvalue on the ramp
    G = st.n * (Q * lam) @ Q.T
    W = rng.normal(size=(1, d, 6))
    row_sq = np.zeros((1, st.n))  # no shrinkage: Sigma_LW = G / n
    got = esm_stats._hscore_dense(esm_stats._Numpy(), t, st, W, G[None], row_sq, RCOND)
    between = (st.class_sums @ W[0].T) / np.sqrt((st.n - 1) * st.counts)[:, None]
    assert got[0] == pytest.approx(trace_pinv_product(G / st.n, between), rel=1e-10)


def test_hscore_tridiagonal_route_equals_the_dense_route():
    X, y = _target(300, 14, 4, seed=13)
    W, b = _maps(5, 14, 11, seed=14)
    st = TargetStats.from_data(X, y)
    xp = esm_stats._Numpy()
    t = esm_stats._prepare(xp, st)
    P = esm_stats._project(xp, t, st.n, W, b)[0]
    tri = esm_stats._tridiagonalise(P, t["z"], t["np"]["rows"])
    assert tri.row_sq is None  # d_out = 11 < r = 14: Pc^T Pc is singular, the rows' GEMM is used
    # the rows' norms ||W xc_i||^2 through the Cholesky factor of Pc^T Pc (d_out >= r)
    W2, b2 = _maps(3, 14, 16, seed=15)
    P2 = esm_stats._project(xp, t, st.n, W2, b2)[0]
    rows = esm_stats._tridiagonalise(P2, t["z"], t["np"]["rows"]).row_sq
    np.testing.assert_allclose(rows, esm_stats._row_norms_sq(xp, st.centred, W2), rtol=1e-10)
    fast = esm_stats._hscore_shrinkage_chunk(xp, t, st, W, P, tri)
    dense = esm_stats._hscore_shrinkage_chunk(xp, t, st, W, P, None)
    np.testing.assert_allclose(fast, dense, rtol=1e-10)
    # through score_many, alone or with LogME (the same shared reduction)
    np.testing.assert_allclose(score_many(st, W, ["esm_hscore_shrinkage"], bias=b)[:, 0], fast, rtol=1e-12)
    np.testing.assert_allclose(score_many(st, W, ["esm_logme", "esm_hscore_shrinkage"], bias=b)[:, 1], fast,
                               rtol=1e-12)


def test_stacked_tridiagonal_solves_equal_dense_linear_algebra():
    rng = np.random.default_rng(15)
    m, k = 4, 9
    off = rng.normal(size=(m, k - 1))
    a = np.abs(off).sum(1, keepdims=True) * 2 + rng.uniform(0.1, 1.0, size=(m, k))  # diagonally dominant
    rhs = rng.normal(size=(m, k, 2))
    x, logdet, trinv = esm_stats._tridiagonal_solve(a, off, rhs, inverse_trace=True)
    for j in range(m):
        T = np.diag(a[j]) + np.diag(off[j], 1) + np.diag(off[j], -1)
        np.testing.assert_allclose(x[j], np.linalg.solve(T, rhs[j]), rtol=1e-12)
        np.testing.assert_allclose(logdet[j], np.linalg.slogdet(T)[1], rtol=1e-12)
        np.testing.assert_allclose(trinv[j], np.trace(np.linalg.inv(T)), rtol=1e-12)
        np.testing.assert_allclose(esm_stats._tridiagonal_times(a, off, rhs)[j], T @ rhs[j], rtol=1e-12)
    shifted = a.copy()
    shifted[[1, 3]] -= 100.0  # indefinite blocks
    np.testing.assert_array_equal(esm_stats._positive_definite(shifted, off), [True, False, True, False])
    with pytest.raises(np.linalg.LinAlgError):
        esm_stats._tridiagonal_solve(shifted, off, rhs)


# ---------------------------------------------------------------------- canonical (triangular) maps
@pytest.mark.parametrize("n,d_in,d_out,C", [(400, 24, 24, 3), (250, 10, 14, 2), (300, 16, 10, 5), (18, 30, 30, 3)])
def test_canonical_maps_give_the_same_scores(n, d_in, d_out, C):
    """The QL rotation of the output space changes no score: the triangular route (n > d, the
    square M_s), the rank-deficient target (n < d: Cholesky route for the H-score) and maps
    with d_out > d_in (zero top rows) all equal the one-source estimators; d_out < d_in maps
    are returned unchanged."""
    X, y = _target(n, d_in, C)
    W, b = _maps(5, d_in, d_out)
    Wc, bc = esm_stats.canonical_maps(W, b)
    assert Wc.shape == W.shape and bc.shape == b.shape
    np.testing.assert_allclose(np.swapaxes(Wc, 1, 2) @ Wc, np.swapaxes(W, 1, 2) @ W, atol=1e-12)
    np.testing.assert_allclose(np.einsum("sij,si->sj", Wc, bc), np.einsum("sij,si->sj", W, b), atol=1e-12)
    if d_out >= d_in:
        top = d_out - d_in
        assert not Wc[:, :top].any() and not np.triu(Wc[:, top:], 1).any()
        assert esm_stats._triangular_maps(Wc) and not esm_stats._triangular_maps(W)
    else:
        np.testing.assert_array_equal(Wc, W)
    st = TargetStats.from_data(X, y)
    np.testing.assert_allclose(score_many(st, Wc, bias=bc), _reference(X, y, W, b), rtol=RTOL)
    np.testing.assert_allclose(esm_stats.logme_lowrank(st, Wc, rank=4, bias=bc),
                               esm_stats.logme_lowrank(st, W, rank=4, bias=b), rtol=1e-9)


def test_canonical_route_is_taken_and_equals_the_general_route(monkeypatch):
    X, y = _target(300, 20, 4)
    W, b = _maps(4, 20, 20)
    Wc, bc = esm_stats.canonical_maps(W, b)
    st = TargetStats.from_data(X, y)
    calls = []
    real = esm_stats._lower_product
    monkeypatch.setattr(esm_stats, "_lower_product", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = score_many(st, Wc, bias=bc)
    assert len(calls) == 4  # one triangular product per source
    calls.clear()
    general = score_many(st, W, bias=b)
    assert not calls
    np.testing.assert_allclose(fast, general, rtol=1e-10)
    # torch float64 on the CPU: the general product, same values
    pytest.importorskip("torch")
    np.testing.assert_allclose(score_many(st, Wc, bias=bc, device="cpu"), general, rtol=1e-8)


def test_a_map_one_entry_off_triangular_takes_the_general_route():
    X, y = _target(200, 12, 3)
    W, b = _maps(3, 12, 12)
    Wc, bc = esm_stats.canonical_maps(W, b)
    Wc[1, 2, 7] = 0.25  # above the diagonal: no longer the canonical form, and a different map
    assert not esm_stats._triangular_maps(Wc)
    np.testing.assert_allclose(score_many(TargetStats.from_data(X, y), Wc, bias=bc), _reference(X, y, Wc, bc),
                               rtol=RTOL)


def test_lower_product_is_the_triangular_matmul():
    rng = np.random.default_rng(3)
    L, R = np.tril(rng.normal(size=(70, 70))), np.tril(rng.normal(size=(70, 70)))
    out = np.empty((70, 70), order="F")
    esm_stats._lower_product(L, np.asfortranarray(R), out, block=16)
    np.testing.assert_allclose(out, L @ R, atol=1e-12)


def test_canonical_maps_of_one_map_and_bad_input():
    W, b = _maps(1, 6, 8)
    Wc, bc = esm_stats.canonical_maps(W[0], b[0])
    assert Wc.shape == (8, 6) and bc.shape == (8,)
    Wz, bz = esm_stats.canonical_maps(W[0])  # no bias: zero bias, rotated zero
    assert not bz.any()
    with pytest.raises(ValueError, match="NaN"):
        esm_stats.canonical_maps(np.full((3, 3), np.nan))


def test_saved_canonical_tensors_are_read_back_and_score_the_same(tmp_path):
    X, y = _target(300, 16, 4)
    W, b = _maps(3, 16, 18)
    paths = []
    for s in range(3):
        esm = EmbeddingSpaceMap(W[s], b[s])
        paths.append(esm.save(tmp_path / f"m{s}.safetensors", dtype="float32", canonical=True))
        assert EmbeddingSpaceMap.load(paths[-1]).weight.shape == (18, 16)  # extra tensors ignored
    st = TargetStats.from_data(X, y)
    Wc, bc = esm_stats.stack_saved(paths)
    assert esm_stats._triangular_maps(Wc)
    W32, b32 = esm_stats.stack_saved(paths, canonical=False)  # the stored float32-rounded maps
    assert not esm_stats._triangular_maps(W32)
    np.testing.assert_allclose(score_many(st, Wc, bias=bc), score_many(st, W32, bias=b32), rtol=1e-9)
    # one file without the canonical form (and an npz): the raw maps for the whole stack
    plain = EmbeddingSpaceMap(W[0], b[0]).save(tmp_path / "plain.safetensors", dtype="float32")
    Wm, _ = esm_stats.stack_saved([paths[0], plain])
    assert not esm_stats._triangular_maps(Wm)
    npz = EmbeddingSpaceMap(W[0], b[0]).save(tmp_path / "m.npz")
    np.testing.assert_array_equal(esm_stats.stack_saved([npz])[0][0], W[0])
    # d_out < d_in: nothing extra is stored
    assert esm_stats.canonical_tensors(np.ones((3, 5)), np.zeros(3)) == {}
