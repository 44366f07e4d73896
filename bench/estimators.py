"""Estimator speed benchmark: every label-based estimator at n=10,000, d=768, C=100.

Run from the repository root::

    python -m bench.estimators [--n 10000 --d 768 --C 100 --Z 1000 --repeat 3 --threads 2 --with-nleep]

Data are seeded synthetic Gaussian class blobs (features) and, for the ``probs`` estimators
(LEEP, NCE), the softmax of a random projection of the features to Z source classes. Prints a
markdown table (estimator, seconds, value), then times LogME against ``reference_logme`` below,
a faithful per-class numpy re-implementation of the reference fixed-point loop
(thuml/LogME ``LogME._fit_fixed_point`` with its ``truncated_svd``), and prints the speed ratio
and whether the two values agree (rtol 1e-6). Timings are wall-clock best-of-``--repeat``
(LogME) or a single run (the others), with the CPU time of all threads next to them (less
sensitive to a busy machine); the machine load is printed alongside. N-LEEP is only sized (its
mixture is far beyond minutes at this size) unless ``--with-nleep``. Exit status 1 when LogME
disagrees with the reference or a non-exempt estimator exceeds 2 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/estimators.py`: bench/ must not shadow the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import estimators  # noqa: E402

# Estimators whose documented cost is super-linear in n or dominated by an iterative fit; the
# 2-second budget at n=10,000 applies to every other estimator.
BUDGET_S = 2.0
EXEMPT = {
    "nleep": "GMM with 5C full-covariance components (O(iters * n * 5C * d'^2))",
}
# Not run at full size unless --with-nleep: a 5C-component full-covariance GMM on n=10,000
# points in the PCA dimensions that keep 80% of the variance does not finish in minutes.
HEAVY = {"nleep"}


def nleep_size(X: np.ndarray, C: int, variance: float = 0.8) -> str:
    """What N-LEEP's mixture would cost on X: components, PCA dimensions, memory, flops/iter."""
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    ratio = np.cumsum(s**2) / np.sum(s**2)
    dims = int(np.searchsorted(ratio, variance, side="right") + 1)
    K, n = 5 * C, X.shape[0]
    return (f"not run (--with-nleep): {K} components x {dims}^2 covariances = "
            f"{K * dims * dims * 8 / 2**30:.1f} GiB, ~{2 * n * K * dims * dims / 1e12:.1f} TFLOP per EM iteration")


def make_data(n: int, d: int, C: int, Z: int, seed: int = 0):
    """Seeded Gaussian blobs (X, y) and source-model probabilities P (softmax of a projection)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    rng.shuffle(y)
    centres = rng.normal(scale=0.08, size=(C, d))  # neighbouring classes overlap a little
    X = centres[y] + rng.normal(size=(n, d))
    logits = X @ rng.normal(scale=1.0 / np.sqrt(d), size=(d, Z)) * 3.0
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    return X, y, P


# --- reference: per-class fixed point as in thuml/LogME (numpy, no numba) -------------------
def _reference_truncated_svd(x: np.ndarray):
    """thuml's truncated_svd: SVD of x^T x, singular values above 1e-10, u = x v / s."""
    u, s, vh = np.linalg.svd(x.T @ x)
    s = np.sqrt(s)
    u_times_sigma = x @ vh.T
    k = int(np.sum(s > 1e-10))
    s = s.reshape(-1, 1)[:k]
    vh = vh[:k]
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    return u, s, vh


def reference_logme(f: np.ndarray, y: np.ndarray) -> float:
    """Per-class fixed-point LogME exactly as the reference loop does it (classification)."""
    f = f.astype(np.float64)
    N, D = f.shape
    if N > D:
        u, s, vh = _reference_truncated_svd(f)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    s = s.reshape(-1, 1)
    sigma = s**2
    evidences = []
    for i in range(int(y.max() + 1)):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (
            D / 2.0 * np.log(alpha)
            + N / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - N / 2.0 * np.log(2 * np.pi)
        )
        evidences.append(evidence / N)
    return float(np.mean(evidences))


def _time(fn, *args, repeat: int = 1, **kw):
    """Best wall-clock seconds, CPU seconds of that run (all threads) and the value."""
    best, cpu, value = float("inf"), float("nan"), None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn(*args, **kw)
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, cpu = wall, used
    return best, cpu, value


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover - not on every platform
        return f"{os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--C", type=int, default=100)
    ap.add_argument("--Z", type=int, default=1000, help="source classes of the probs estimators")
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats for the LogME comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated estimators to time (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated estimators not to time")
    ap.add_argument("--with-nleep", action="store_true", help="also run N-LEEP at full size (very slow)")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's)")
    args = ap.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    X, y, P = make_data(args.n, args.d, args.C, args.Z, args.seed)
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    names = [
        nm for nm in estimators.names()
        if estimators.info(nm).needs in ("features", "probs") and (not only or nm in only) and nm not in skip
    ]
    print(f"# Estimator timings: n={args.n}, d={args.d}, C={args.C}, Z={args.Z} (seed {args.seed})\n")
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"BLAS threads {args.threads or 'default'}; {_load()} at start\n")
    print("| estimator | needs | seconds | CPU s | value | note |")
    print("|---|---|---:|---:|---:|---|")
    over = []
    for nm in names:
        inp = P if estimators.info(nm).needs == "probs" else X
        if nm in HEAVY and not args.with_nleep:
            print(f"| {nm} | {estimators.info(nm).needs} | - | - | - | {nleep_size(X, args.C)} |", flush=True)
            continue
        try:
            sec, cpu, val = _time(estimators.score, nm, inp, y)
            shown = f"{val:.6g}"
        except Exception as exc:  # report and continue: one failure must not hide the others
            sec, cpu, shown = float("nan"), float("nan"), f"error: {type(exc).__name__}: {str(exc)[:80]}"
        note = EXEMPT.get(nm, "")
        if sec > BUDGET_S and nm not in EXEMPT:
            note = f"over the {BUDGET_S:g} s budget"
            over.append(nm)
        print(f"| {nm} | {estimators.info(nm).needs} | {sec:.3f} | {cpu:.3f} | {shown} | {note} |", flush=True)

    print(f"\n## LogME: vectorised vs per-class reference loop (best of {args.repeat})\n")
    t_ours, c_ours, v_ours = _time(estimators.score, "logme", X, y, repeat=args.repeat)
    t_ref, c_ref, v_ref = _time(reference_logme, X, y, repeat=args.repeat)
    agree = bool(np.isclose(v_ours, v_ref, rtol=1e-6, atol=0.0))
    print("| implementation | seconds | CPU s | value |")
    print("|---|---:|---:|---:|")
    print(f"| estimators.logme (all classes at once) | {t_ours:.3f} | {c_ours:.3f} | {v_ours:.10g} |")
    print(f"| reference per-class fixed-point loop | {t_ref:.3f} | {c_ref:.3f} | {v_ref:.10g} |")
    print(f"\nspeed-up: {t_ref / t_ours:.2f}x wall-clock, {c_ref / c_ours:.2f}x CPU time; values agree (rtol 1e-6): {agree} "
          f"(relative difference {abs(v_ours - v_ref) / abs(v_ref):.2e})")
    print(f"{_load()} at the end")
    if over:
        print(f"\nover budget: {', '.join(over)}")
    return 0 if agree and not over else 1


if __name__ == "__main__":
    raise SystemExit(main())
