"""Catalogue-scale benchmark: scoring 100 / 1,000 / 10,000 source ESMs against one target.

Run from the repository root::

    python -m bench.scale [--sizes 100,1000,10000] [--n 1000] [--compare 100] [--device cpu|cuda]
                          [--shortlist 200] [--calibration 64] [--out bench/results/scale.md]
    python -m bench.scale --api --sizes 10000 [--n 1000] [--data-dir /tmp/transferrank-scale]
                          [--reference /tmp/transferrank-scale-reference-10000.npz] [--repeats 20]

Inputs (the same for every path):

* **Target.** ``n`` rows drawn (seeded) from the shipped demo catalogue's real MiniLM-L6
  base-encoder embeddings (``app/demo/data``, 3,280 texts, d = 384; with replacement for a larger
  ``--n``), labelled with the corpus each text comes from (6 classes): a real 6-way
  text-classification target.
* **Catalogue.** Source ESMs around the six real demo ESMs (fine-tuned MiniLM maps fitted by
  the demo build): source i mixes two of them, ``W = l W_a + (1 - l) W_c`` plus a rank-16
  perturbation of 10 % of their scale (bias alike), seeded by i, so a 10,000-source catalogue
  is generated a chunk at a time and never held in memory.

Paths timed (1 BLAS thread, ``OMP_NUM_THREADS=1``; torch with 1 thread):

* **hf-dataset-selector loop** — a re-implementation of ``hfselect.compute_scores``: each ESM
  is a float32 ``torch.nn.Linear`` applied to the base embeddings in batches of 128, then
  LogME per source with thuml/LogME's per-class fixed point (``bench.estimators.reference_logme``).
* **old path** — ``estimators.score("esm_<name>", X, y, esm=...)`` one source at a time.
* **new path** — ``estimators.esm_stats``: target statistics once, then ``score_many``.
* **two-stage** — ``estimators.esm_stats.rank_two_stage`` (low-rank LogME + exact ETran-LDA over
  every source, the exact default on the shortlist + a random calibration sample).

The per-source comparisons run on the first ``--compare`` sources (values checked: old vs new
to rtol 1e-6; the hf loop maps in float32, so rtol 1e-4); each catalogue size runs the new
exhaustive default and the two-stage ranking in a fresh process (peak RSS per process), with
recall@10 of the two-stage top 10 against the exhaustive default's (``rank_candidates`` over
all sources). ``--device cuda`` runs the new path's numerics and the hf loop's linear maps on
the GPU. Writes a markdown report with the command (default ``bench/results/scale.md``) and
the raw numbers next to it (``.json``).

``--api`` (``api_run``): the catalogue (last of ``--sizes``) is imported into ``--data-dir`` through
``app.services.catalogue.import_dir`` -- what ``transferrank sources import FOLDER --data-dir DIR``
runs, the supported path for catalogues too big to upload -- in batches of 500 folders written in
hf-dataset-selector's layout (float32, as stored; writing them is not timed; a later run reuses
the data dir). A real ``transferrank serve`` (SQLite, local workers, the environment's
``TRANSFERRANK_*`` settings: two-stage above 500 candidates by default) then gets the target as
an NPZ of base features and the default tasks ranking: cold (POST until the ranking is done) and
``--repeats`` cached repeats (the ranking memo), plus one with ``If-None-Match`` (304). recall@10
is against the exhaustive default computed in the library on the same (float32-rounded) ESMs,
cached in ``--reference``. Peak RSS of the server and of this process. Report:
``bench/results/scale_api.md`` (+ ``.json``).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

if not __package__:  # run as `python bench/scale.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

RANK = 16  # rank of each synthetic source's perturbation
PERTURB = 0.10  # its scale relative to the demo maps
ESTIMATORS = ("esm_logme", "esm_etran_lda", "esm_hscore_shrinkage")


# ---------------------------------------------------------------------- inputs
def _limit_threads():
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def load_target(n: int, seed: int = 0):
    """``n`` demo base embeddings (float64) and their corpus labels (6 classes); above the 3,280
    demo texts (``--n 10000``) the rows are drawn with replacement (texts repeat)."""
    from app.demo import load_demo_catalogue

    cat = load_demo_catalogue()
    X = np.vstack([c.base_embeddings for c in cat]).astype(np.float64)
    y = np.concatenate([[c.name] * c.n for c in cat])
    idx = np.random.default_rng(seed).choice(X.shape[0], n, replace=n > X.shape[0])
    return X[idx], y[idx]


def demo_maps():
    from app.demo import load_demo_catalogue

    cat = [c for c in load_demo_catalogue() if c.esm is not None]
    return np.stack([c.esm.weight for c in cat]), np.stack([c.esm.bias for c in cat])


class Catalogue:
    """Source i's ESM, generated from the demo maps and seed (seed, i); any index set at a time."""

    def __init__(self, size: int, seed: int = 0, canonical: bool = False):
        self.size = size
        self.seed = seed
        self.canonical = canonical  # the maps in their stored (canonical) form, as the service keeps them
        self.W0, self.b0 = demo_maps()
        self.w_scale = float(self.W0.std())
        self.b_scale = float(self.b0.std())

    @property
    def names(self) -> list[str]:
        return [f"src-{i:05d}" for i in range(self.size)]

    def __call__(self, idx) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        k, (m, d_out, d_in) = idx.size, self.W0.shape
        W = np.empty((k, d_out, d_in))
        b = np.empty((k, d_out))
        for row, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, int(i)])
            a, c = rng.choice(m, size=2, replace=False)
            lam = rng.uniform()
            U = rng.normal(size=(d_out, RANK))
            V = rng.normal(size=(d_in, RANK))
            W[row] = lam * self.W0[a] + (1 - lam) * self.W0[c] + PERTURB * self.w_scale * (U @ V.T) / np.sqrt(RANK)
            b[row] = lam * self.b0[a] + (1 - lam) * self.b0[c] + PERTURB * self.b_scale * rng.normal(size=d_out)
        if self.canonical:
            from estimators.esm_stats import canonical_maps

            return canonical_maps(W, b)
        return W, b


# ---------------------------------------------------------------------- the paths
def hf_esms(W, b, device: str = "cpu") -> list:
    """The ESMs as hfselect holds them: float32 ``torch.nn.Linear`` modules on ``device``."""
    import torch

    dev = torch.device(device)
    esms = []
    for w, bb in zip(W, b):
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).to(dev)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(bb.astype(np.float32)))
        esms.append(lin)
    return esms


def hf_loop(X, y, esms: list, device: str = "cpu", batch_size: int = 128) -> np.ndarray:
    """hfselect.compute_scores re-implemented: every ESM applied to each batch of base
    embeddings (float32, as its DataLoader loop does), then LogME per source (thuml's fixed
    point, float64). Building the modules (``hf_esms``) is not part of it."""
    import torch

    from bench.estimators import reference_logme

    dev = torch.device(device)
    _, labels = np.unique(y, return_inverse=True)
    base = torch.from_numpy(X.astype(np.float32))
    mapped = [[] for _ in esms]
    with torch.no_grad():
        for start in range(0, base.shape[0], batch_size):
            batch = base[start:start + batch_size].to(dev)
            for i, esm in enumerate(esms):
                mapped[i].append(esm(batch).cpu().numpy())
    return np.array([reference_logme(np.vstack(parts), labels) for parts in mapped])


def old_path(X, y, W, b, names=ESTIMATORS) -> np.ndarray:
    import estimators

    return np.array([[estimators.score(e, X, y, esm={"weight": W[i], "bias": b[i]}) for e in names]
                     for i in range(W.shape[0])])


def _timed(fn, *args, **kw):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------- workers (fresh processes)
def compare_worker(args: dict) -> dict:
    """Per-source comparisons on the first ``compare`` sources, interleaved in rounds of
    ``block`` sources (hf loop, old path, new path on the same block, one after the other) so a
    machine whose load changes during the run affects every path alike."""
    _limit_threads()
    from estimators.esm_stats import TargetStats, canonical_maps, score_many

    X, y = load_target(args["n"], args["seed"])
    cat = Catalogue(args["compare"], args["seed"])
    dev = None if args["device"] == "cpu" else args["device"]
    stats, t_st, _ = _timed(TargetStats.from_data, X, y)
    W0, b0 = cat([0])
    score_many(stats, W0, ["esm_logme"], bias=b0, device=dev)  # the target basis
    block = args["block"]
    names = ("hf", "old_logme", "new_logme_raw", "canonicalise", "new_logme", "old_default", "new_default")
    wall = {k: 0.0 for k in names}
    cpu = {k: 0.0 for k in names}
    count = {k: 0 for k in names}
    rounds = []
    vals = {k: [] for k in names}
    old_trio_left = args["old_trio"]
    # one untimed round of every path on the first block: imports, torch's first calls, the
    # work arrays of a full chunk (steady state, as over a catalogue of thousands of sources)
    Ww, bw = cat(np.arange(min(block, args["compare"])))
    hf_loop(X, y, hf_esms(Ww, bw, device=args["device"]), device=args["device"])
    old_path(X, y, Ww[:2], bw[:2])
    score_many(stats, Ww, list(ESTIMATORS), bias=bw, device=dev)
    Wcw, bcw = canonical_maps(Ww, bw)
    score_many(stats, Wcw, list(ESTIMATORS), bias=bcw, device=dev)
    del Ww, bw, Wcw, bcw
    for start in range(0, args["compare"], block):
        idx = np.arange(start, min(args["compare"], start + block))
        W, b = cat(idx)
        r = {}
        esms = hf_esms(W, b, device=args["device"])
        stored: list = []  # the canonical maps, as the service stores every source (once, at import)
        calls = {
            "hf": (hf_loop, (X, y, esms), {"device": args["device"]}),
            "old_logme": (old_path, (X, y, W, b), {"names": ("esm_logme",)}),
            "new_logme_raw": (score_many, (stats, W, ["esm_logme"]), {"bias": b, "device": dev}),
            "canonicalise": (lambda: stored.extend(canonical_maps(W, b)) or np.zeros(idx.size), (), {}),
            "new_logme": (lambda: score_many(stats, stored[0], ["esm_logme"], bias=stored[1], device=dev), (), {}),
            "new_default": (lambda: score_many(stats, stored[0], list(ESTIMATORS), bias=stored[1], device=dev),
                            (), {}),
        }
        for key, (fn, fargs, fkw) in calls.items():
            out, tw, tc = _timed(fn, *fargs, **fkw)
            out = out[:, 0] if key in ("old_logme", "new_logme", "new_logme_raw") else out
            wall[key] += tw
            cpu[key] += tc
            count[key] += idx.size
            vals[key].append(out)
            r[key] = (tw / idx.size, tc / idx.size)
        if old_trio_left > 0:
            k = min(old_trio_left, idx.size)
            out, tw, tc = _timed(old_path, X, y, W[:k], b[:k])
            wall["old_default"] += tw
            cpu["old_default"] += tc
            count["old_default"] += k
            vals["old_default"].append(out)
            old_trio_left -= k
        rounds.append({"sources": int(idx.size), "hf_over_new_logme_wall": r["hf"][0] / r["new_logme"][0],
                       "hf_over_new_logme_cpu": r["hf"][1] / r["new_logme"][1]})
    res: dict = {"sources": int(args["compare"]), "block": block, "stats_s": t_st, "rounds": rounds}
    for k in names:
        res[k] = {"s_per_source": wall[k] / max(count[k], 1), "cpu_per_source": cpu[k] / max(count[k], 1),
                  "sources": count[k]}
    cat_ = {k: np.concatenate(v) for k, v in vals.items() if v}
    n_old = cat_["old_default"].shape[0]
    rel = lambda a, r: float(np.max(np.abs(a - r) / np.abs(r)))  # noqa: E731
    res["max_rel_diff"] = {
        "new_logme_vs_old": rel(cat_["new_logme"], cat_["old_logme"]),
        "new_logme_raw_vs_old": rel(cat_["new_logme_raw"], cat_["old_logme"]),
        "new_default_vs_old": rel(cat_["new_default"][:n_old], cat_["old_default"]),
        "new_logme_vs_hf": rel(cat_["new_logme"], cat_["hf"]),
        "old_logme_vs_hf": rel(cat_["old_logme"], cat_["hf"]),
    }
    res["values_agree"] = bool(res["max_rel_diff"]["new_default_vs_old"] <= 1e-6
                               and res["max_rel_diff"]["new_logme_vs_old"] <= 1e-6
                               and res["max_rel_diff"]["new_logme_raw_vs_old"] <= 1e-6
                               and res["max_rel_diff"]["new_logme_vs_hf"] <= 1e-4)
    res["median_round_ratio_wall"] = float(np.median([r["hf_over_new_logme_wall"] for r in rounds]))
    res["median_round_ratio_cpu"] = float(np.median([r["hf_over_new_logme_cpu"] for r in rounds]))
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


def catalogue_worker(args: dict) -> dict:
    """Exhaustive default and two-stage ranking over a catalogue of ``size`` sources."""
    _limit_threads()
    from estimators.esm_stats import TargetStats, combine_shortlist, rank_two_stage, score_many
    from estimators.ranking import rank_candidates

    X, y = load_target(args["n"], args["seed"])
    size, chunk = args["size"], args["chunk"]
    cat = Catalogue(size, args["seed"], canonical=True)  # as stored: canonicalised at import, not timed
    dev = None if args["device"] == "cpu" else args["device"]
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    stats = TargetStats.from_data(X, y)
    t_stats = time.perf_counter() - t0
    exact = np.empty((size, len(ESTIMATORS)))
    t_score = t_gen = c_score = 0.0
    for start in range(0, size, chunk):
        idx = np.arange(start, min(size, start + chunk))
        g0 = time.perf_counter()
        W, b = cat(idx)
        t_gen += time.perf_counter() - g0
        s0, c0 = time.perf_counter(), time.process_time()
        exact[idx] = score_many(stats, W, list(ESTIMATORS), bias=b, device=dev)
        t_score += time.perf_counter() - s0
        c_score += time.process_time() - c0
        del W, b
    names = cat.names
    t0 = time.perf_counter()
    full = rank_candidates({names[i]: {"scores": {"logme": exact[i, 0], "etran_lda": exact[i, 1],
                                                  "hscore_shrinkage": exact[i, 2]}} for i in range(size)},
                           np.zeros(2, dtype=int), kind="tasks")
    t_combine = time.perf_counter() - t0
    truth = [r["name"] for r in full[:10]]
    rss_exhaustive = _peak_rss_mb()

    gen_time = [0.0, 0.0]

    def load(idx):
        g0, c0 = time.perf_counter(), time.process_time()
        out = cat(idx)
        gen_time[0] += time.perf_counter() - g0
        gen_time[1] += time.process_time() - c0
        return out

    t0, c0 = time.perf_counter(), time.process_time()
    two = rank_two_stage(stats, load, names, shortlist=args["shortlist"], calibration=args["calibration"],
                         device=dev, chunk_size=chunk)
    t_two = time.perf_counter() - t0 - gen_time[0]
    c_two = time.process_time() - c0 - gen_time[1]
    got = [r["name"] for r in two["ranking"][:10]]
    res = {
        "size": size,
        "stats_s": t_stats,
        "exhaustive_default_s": t_score,
        "exhaustive_per_source_s": t_score / size,
        "exhaustive_default_cpu_s": c_score,
        "two_stage_cpu_s": c_two,
        "combine_s": t_combine,
        "generation_s_excluded": t_gen,
        "two_stage_s": t_two,
        "two_stage_recall_at_10": len(set(truth) & set(got)) / 10.0,
        "peak_rss_mb_exhaustive": rss_exhaustive,
        "peak_rss_mb_start": rss0,
        "peak_rss_mb": _peak_rss_mb(),
    }
    # Recall of other shortlist sizes / first stages, from the exhaustive values (same numbers
    # score_many would return on the subset): which first stage keeps the true top 10.
    first_stages = {
        "lowrank LogME + exact ETran-LDA (default)": two["first_stage"],
        "lowrank LogME alone": two["stage1"]["logme_lowrank"],
        "exact ESM-LogME alone": exact[:, 0],
    }
    rng = np.random.default_rng(0)
    table = {}
    for label, first in first_stages.items():
        order = np.argsort(-np.nan_to_num(first, nan=-np.inf), kind="stable")
        row = {}
        for m in (10, 50, 100, 200, 500, 1000):
            if m > size:
                continue
            top, rest = order[:m], order[m:]
            calib = rng.choice(rest, size=min(args["calibration"], rest.size), replace=False) if rest.size else rest
            comb = combine_shortlist(exact[top], exact[calib], rest.size, lda_all=exact[:, 1])
            best = [names[top[i]] for i in sorted(range(m), key=lambda i: (-comb[i], names[top[i]]))[:10]]
            row[str(m)] = {"recall_at_10": len(set(best) & set(truth)) / 10.0,
                           "shortlist_recall_of_true_top10": len(set(names[i] for i in top) & set(truth)) / 10.0}
        table[label] = row
    res["recall_table"] = table
    return res


# ---------------------------------------------------------------------- through the REST API
def _write_hf_folder(folder: Path, W: np.ndarray, b: np.ndarray, base: str) -> None:
    """One ESM in hf-dataset-selector's layout (float32 tensors, as the service stores them)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"base_model_name": base, "task_id": folder.name,
                                                    "esm_architecture": "linear"}))
    save_file({"model.weight": np.ascontiguousarray(W, dtype=np.float32),
               "model.bias": np.ascontiguousarray(b, dtype=np.float32)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def api_register(data_dir: Path, size: int, seed: int, batch: int = 500) -> dict:
    """Import the catalogue into ``data_dir`` the way ``transferrank sources import FOLDER
    --data-dir DIR`` does (``app.services.catalogue.import_dir``, the CLI path for catalogues too
    big to upload), ``batch`` sources at a time (the folders of a batch are written, imported,
    removed). Writing the folders (ESM generation) is excluded from the import time."""
    import shutil
    import tempfile

    from app.core.config import Settings
    from app.db.models import PUBLIC_OWNER
    from app.services import catalogue as catalogue_svc
    from app.services.context import Context

    settings = Settings.from_env(None, data_dir=data_dir, seed_demo=False, train_demo_esms=False,
                                 log_level="WARNING")
    ctx = Context.open(settings, seed=False)
    cat = Catalogue(size, seed)
    names = cat.names
    t_import = t_gen = 0.0
    try:
        for start in range(0, size, batch):
            idx = np.arange(start, min(size, start + batch))
            tmp = Path(tempfile.mkdtemp(prefix="scale-esms-"))
            try:
                g0 = time.perf_counter()
                W, b = cat(idx)
                for k, i in enumerate(idx):
                    _write_hf_folder(tmp / names[i], W[k], b[k], settings.base_encoder)
                del W, b
                t_gen += time.perf_counter() - g0
                i0 = time.perf_counter()
                catalogue_svc.import_dir(ctx, tmp, settings.base_encoder, "", owner=PUBLIC_OWNER)
                t_import += time.perf_counter() - i0
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"[scale --api] imported {idx[-1] + 1}/{size} sources ({t_import:.0f} s import)", flush=True)
    finally:
        ctx.close()
    return {"sources": size, "import_s": t_import, "generation_s_excluded": t_gen, "batch": batch,
            "path": "app.services.catalogue.import_dir (= transferrank sources import FOLDER --data-dir DIR)"}


def api_reference(args: dict) -> dict:
    """The exhaustive default in the library on the ESMs the service holds (float32-rounded maps,
    as stored): ``score_many`` over every source, ``rank_candidates`` over all. Cached in
    ``args["reference"]`` (``.npz``): long at 10,000 sources (about 23 ms per source on one core)."""
    _limit_threads()
    from estimators.esm_stats import TargetStats, score_many
    from estimators.ranking import rank_candidates

    path = Path(args["reference"])
    key = f"size={args['size']} n={args['n']} seed={args['seed']} rank={RANK} perturb={PERTURB} float32"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {"exact": z["exact"], "top10": [str(x) for x in z["top10"]], "seconds": float(z["seconds"]),
                        "cached": True, "file": str(path)}
    X, y = load_target(args["n"], args["seed"])
    cat = Catalogue(args["size"], args["seed"])
    stats = TargetStats.from_data(X, y)
    exact = np.empty((args["size"], len(ESTIMATORS)))
    t0 = time.perf_counter()
    for start in range(0, args["size"], args["chunk"]):
        idx = np.arange(start, min(args["size"], start + args["chunk"]))
        W, b = cat(idx)
        W, b = W.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
        exact[idx] = score_many(stats, W, list(ESTIMATORS), bias=b)
    seconds = time.perf_counter() - t0
    names = cat.names
    full = rank_candidates({names[i]: {"scores": {e[len("esm_"):]: exact[i, j] for j, e in enumerate(ESTIMATORS)}}
                            for i in range(args["size"])}, np.zeros(2, dtype=int), kind="tasks")
    top10 = [r["name"] for r in full[:10]]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, key=np.array(key), exact=exact, top10=np.array(top10), seconds=np.array(seconds))
    return {"exact": exact, "top10": top10, "seconds": seconds, "cached": False, "file": str(path)}


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def api_run(args: dict) -> dict:
    """Register the catalogue (unless ``data_dir`` already holds it), start ``transferrank serve``
    on it (SQLite, local workers), upload the target as NPZ base features and time the default
    tasks ranking through the REST API: cold (POST to the finished ranking) and cached repeats."""
    import io
    import socket
    import subprocess
    import urllib.request

    import httpx

    size = args["size"]
    data_dir = Path(args["data_dir"]).resolve()
    marker = data_dir / f"scale-catalogue-{size}-{args['seed']}.json"
    if marker.is_file():
        reg = json.loads(marker.read_text())
        reg["reused"] = True
    else:
        if data_dir.exists() and any(data_dir.iterdir()):
            raise SystemExit(f"{data_dir} is not empty and holds no {size}-source catalogue of this benchmark")
        print(f"[scale --api] importing {size} sources into {data_dir} ...", flush=True)
        reg = api_register(data_dir, size, args["seed"])
        marker.write_text(json.dumps(reg))
    X, y = load_target(args["n"], args["seed"])
    _, labels = np.unique(y, return_inverse=True)
    buf = io.BytesIO()
    np.savez(buf, features=X.astype(np.float32), labels=labels.astype(np.int64))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # no encoder warm-up: `serve` would otherwise load (and distil) the model candidates in the background
    # while the ranking is timed; a tasks ranking of an NPZ target needs no encoder
    env = dict(os.environ, TRANSFERRANK_SEED_DEMO="0", TRANSFERRANK_TRAIN_DEMO_ESMS="0", TRANSFERRANK_WARM_UP="0",
               TRANSFERRANK_LOG_LEVEL="WARNING", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if args.get("workers"):
        env["TRANSFERRANK_WORKERS"] = str(args["workers"])
    log_path = data_dir / "scale-serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir",
                                 str(data_dir)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    out: dict = {"size": size, "registration": reg, "server_pid": proc.pid}
    try:
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit(f"serve did not come up: see {log_path}") from None
                time.sleep(0.3)
        out["server_start_s"] = time.perf_counter() - t0
        with httpx.Client(base_url=base, timeout=600) as http:
            u0 = time.perf_counter()
            r = http.post("/v1/datasets", files={"file": ("target.npz", buf.getvalue())},
                          data={"name": f"scale-target-{args['n']}"})
            r.raise_for_status()
            if r.status_code == 200:  # left by an interrupted run: delete it (and its cached scores), cold again
                http.delete(f"/v1/datasets/{r.json()['id']}").raise_for_status()
                u0 = time.perf_counter()
                r = http.post("/v1/datasets", files={"file": ("target.npz", buf.getvalue())},
                              data={"name": f"scale-target-{args['n']}"})
                r.raise_for_status()
            out["upload_s"] = time.perf_counter() - u0
            target = r.json()["id"]
            body = {"target": target, "candidates": "tasks", "top_k": 10}
            c0 = time.perf_counter()
            r = http.post("/v1/rankings", json=body)
            r.raise_for_status()
            ranking = r.json()
            polls = 0
            while ranking["status"] not in ("done", "failed", "cancelled"):
                time.sleep(0.2)
                polls += 1
                ranking = http.get(f"/v1/rankings/{ranking['id']}").json()
            out["cold_s"] = time.perf_counter() - c0
            out["cold_status_code"] = r.status_code
            if ranking["status"] != "done":
                raise SystemExit(f"the ranking {ranking['status']}: {ranking.get('error')}")
            out["server_seconds"] = ranking.get("seconds")
            out["two_stage"] = {k: v for k, v in (ranking.get("two_stage") or {}).items() if k != "exact_sources"}
            out["top10"] = [it["source"] for it in ranking["ranking"][:10]]
            out["stages_top10"] = [it.get("stage") for it in ranking["ranking"][:10]]
            out["uncertainty"] = ranking.get("uncertainty")
            times, codes = [], []
            for _ in range(args["repeats"]):
                c0 = time.perf_counter()
                r = http.post("/v1/rankings", json=body)
                times.append(time.perf_counter() - c0)
                codes.append(r.status_code)
            tag = r.headers.get("ETag")
            c0 = time.perf_counter()
            r304 = http.post("/v1/rankings", json=body, headers={"If-None-Match": tag or ""})
            out["etag_304_s"] = time.perf_counter() - c0
            out["etag_status"] = r304.status_code
            out["cached_s"] = {"median": float(np.median(times)), "max": float(np.max(times)), "n": len(times),
                               "status_codes": sorted(set(codes)),
                               "same_ranking": r.json().get("id") == ranking["id"]}
            # the target and its cached scores go, so that the next run on this data dir is cold again
            http.delete(f"/v1/datasets/{target}").raise_for_status()
        out["server_peak_rss_mb"] = _vm_hwm_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
    ref = api_reference(args)
    out["reference"] = {"exhaustive_library_s": ref["seconds"], "cached": ref["cached"], "file": ref["file"],
                        "top10": ref["top10"]}
    out["recall_at_10"] = len(set(ref["top10"]) & set(out["top10"])) / 10.0
    out["bench_peak_rss_mb"] = _peak_rss_mb()
    return out


def api_report(cmd: str, res: dict, before: str, after: str) -> str:
    ts = res.get("two_stage") or {}
    c = res["cached_s"]
    lines = [
        "# Catalogue scale through the REST API (bench/scale.py --api)", "",
        f"Command: `{cmd}`", "",
        f"Machine: {before} (before); {after} (after). BLAS 1 thread per worker; service: `transferrank serve` "
        "(SQLite, local worker pool).", "",
        f"Catalogue: {res['size']:,} sources imported with `{res['registration']['path']}` in "
        f"{res['registration']['import_s']:.0f} s (ESM generation excluded"
        f"{'; reused from an earlier run' if res['registration'].get('reused') else ''}). "
        "Target: n=1000 MiniLM-L6 demo embeddings uploaded as NPZ "
        f"({res['upload_s']:.2f} s).", "",
        "| what | value | target |", "|---|---|---|",
        f"| cold default tasks ranking, POST to finished ranking | {res['cold_s']:.1f} s (server: "
        f"{res['server_seconds']} s) | <= 60 s |",
        f"| recall@10 vs the exhaustive default (library, same ESMs) | {res['recall_at_10']:.2f} | >= 0.95 |",
        f"| cached repeat POST (median / max of {c['n']}) | {1000 * c['median']:.1f} / {1000 * c['max']:.1f} ms, "
        f"status {c['status_codes']} | <= 100 ms |",
        f"| repeat with If-None-Match | {1000 * res['etag_304_s']:.1f} ms, status {res['etag_status']} | |",
        f"| server peak RSS | {res['server_peak_rss_mb']:.0f} MB | |",
        f"| benchmark process peak RSS | {res['bench_peak_rss_mb']:.0f} MB | |",
        "",
        f"Two-stage: {json.dumps(ts.get('settings'))}; first stage "
        f"{json.dumps(ts.get('first_stage'))}; {ts.get('exact')} sources scored exactly. "
        f"Top-10 stages: {res['stages_top10']}.", "",
        f"Exhaustive reference (library, `score_many` over every source + `rank_candidates`): "
        f"{res['reference']['exhaustive_library_s']:.0f} s"
        f"{' (read from ' + res['reference']['file'] + ')' if res['reference']['cached'] else ''}.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _run(fn, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, (args,))


# ---------------------------------------------------------------------- report
def _machine() -> str:
    try:
        one, five, _ = os.getloadavg()
        load = f"load average {one:.2f} (1 min) / {five:.2f} (5 min)"
    except OSError:  # pragma: no cover
        load = "load unknown"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {load}, Python {platform.python_version()}"


def report(cmd: str, args, compare: dict, sizes: list[dict], machine_before: str, machine_after: str) -> str:
    c = compare
    ratio_logme = c["hf"]["s_per_source"] / c["new_logme"]["s_per_source"]
    ratio_cpu = c["hf"]["cpu_per_source"] / c["new_logme"]["cpu_per_source"]
    lines = [
        "# Catalogue scale: ESM scoring of many sources (bench/scale.py)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {machine_before} (before); {machine_after} (after). Device: `{args.device}`. "
        "BLAS and torch limited to 1 thread.",
        "",
        f"Target: n={args.n} real MiniLM-L6 demo embeddings (d=384), 6 classes (corpus of origin). "
        f"Sources: ESMs around the 6 real demo ESMs (mixtures + rank-{RANK} perturbation, seeded).",
        "",
        f"## Per source (first {c['sources']} sources; default trio of the old path on {c['old_default']['sources']})",
        "",
        "| path | wall s / source | CPU s / source | vs hf loop (wall) | vs hf loop (CPU) |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("hf", "hf-dataset-selector loop (float32 nn.Linear + thuml LogME)"),
                       ("old_logme", "old `esm_logme`, one source at a time"),
                       ("new_logme_raw", "new `esm_logme` from target statistics, maps as given"),
                       ("canonicalise", "canonical form of a map (once per source, at import; not per target)"),
                       ("new_logme", "**new `esm_logme` from target statistics, stored (canonical) maps**"),
                       ("old_default", "old default trio, one source at a time"),
                       ("new_default", "new default trio from target statistics, stored (canonical) maps")):
        if key not in c:  # a result file written before that path existed
            continue
        v = c[key]
        lines.append(f"| {label} | {v['s_per_source']:.4f} | {v['cpu_per_source']:.4f} | "
                     f"{c['hf']['s_per_source'] / v['s_per_source']:.1f}x | "
                     f"{c['hf']['cpu_per_source'] / v['cpu_per_source']:.1f}x |")
    lines += [
        "",
        f"Rounds of {c['block']} sources (hf, old, new on the same block in turn, after one untimed round of every path): median hf / new "
        f"ESM-LogME ratio {c['median_round_ratio_wall']:.1f}x wall, {c['median_round_ratio_cpu']:.1f}x CPU.",
        "",
        f"Target statistics once: {c['stats_s']:.3f} s. Largest relative differences: "
        + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_diff"].items())
        + f" -> values agree: **{c['values_agree']}**. Peak RSS {c['peak_rss_mb']:.0f} MB.",
        "",
        f"Target >= 5x per source vs the hf-dataset-selector loop (ESM-LogME, scoring a stored source): "
        f"**{'met' if min(ratio_logme, ratio_cpu) >= 5 else 'NOT met'}** ({ratio_logme:.1f}x wall, {ratio_cpu:.1f}x CPU).",
        "",
        "The service stores every source's map with its canonical form (`EmbeddingSpaceMap.save(canonical=True)` "
        "at registration or import: a rotation of the output space that changes no score and makes W lower "
        "triangular), so a ranking scores stored maps; the one-off canonicalisation is timed in its own row. "
        + (f"Even counting it against a single target, hf / (canonicalise + new) = "
           f"{c['hf']['s_per_source'] / (c['canonicalise']['s_per_source'] + c['new_logme']['s_per_source']):.1f}x wall."
           if "canonicalise" in c else ""),
        "",
        f"## Catalogues (exhaustive default vs two-stage: shortlist {args.shortlist}, calibration {args.calibration})",
        "",
        "| sources | exhaustive default: wall s (CPU s) | wall s / source | two-stage: wall s (CPU s) "
        "| two-stage recall@10 | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for s in sizes:
        lines.append(f"| {s['size']:,} | {s['exhaustive_default_s']:.1f} ({s['exhaustive_default_cpu_s']:.1f}) | "
                     f"{s['exhaustive_per_source_s']:.4f} | {s['two_stage_s']:.1f} ({s['two_stage_cpu_s']:.1f}) | "
                     f"{s['two_stage_recall_at_10']:.2f} | {s['peak_rss_mb']:.0f} |")
    lines += ["", "Generating the synthetic ESMs (and their canonical form, which the service computes once at "
              "import) is excluded from the times (the service reads them from its blob store instead).", ""]
    for s in sizes:
        if not s.get("recall_table"):
            continue
        lines += [f"### Recall@10 vs the exhaustive default, {s['size']:,} sources (first stage x shortlist)", "",
                  "| first stage | " + " | ".join(f"M={m}" for m in next(iter(s["recall_table"].values()))) + " |",
                  "|---|" + "---|" * len(next(iter(s["recall_table"].values())))]
        for label, row in s["recall_table"].items():
            lines.append(f"| {label} | " + " | ".join(
                f"{v['recall_at_10']:.2f} ({v['shortlist_recall_of_true_top10']:.1f})" for v in row.values()) + " |")
        lines += ["", "Cells: recall@10 of the two-stage top 10 (in brackets: share of the true top 10 inside "
                  "the shortlist).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--compare", type=int, default=100, help="sources for the per-source comparisons")
    p.add_argument("--old-trio", type=int, default=30, help="sources for the old path's default trio")
    p.add_argument("--block", type=int, default=25, help="sources per interleaved comparison round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shortlist", type=int, default=200)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="report (default bench/results/scale.md, --api: scale_api.md)")
    p.add_argument("--api", action="store_true", help="through the REST API: one catalogue of --sizes (last) "
                   "registered into --data-dir, a real `transferrank serve`, cold + cached tasks rankings")
    p.add_argument("--data-dir", default="/tmp/transferrank-scale", help="--api: the service's data dir (the "
                   "imported catalogue is reused by later runs)")
    p.add_argument("--reference", default=None, help="--api: cache file of the exhaustive default "
                   "(default /tmp/transferrank-scale-reference-<size>.npz)")
    p.add_argument("--repeats", type=int, default=20, help="--api: cached repeats timed")
    p.add_argument("--workers", type=int, default=None, help="--api: TRANSFERRANK_WORKERS of the service")
    args = p.parse_args(argv)
    cmd = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.api:
        size = int([s for s in args.sizes.split(",") if s][-1])
        before = _machine()
        res = api_run({"size": size, "n": args.n, "seed": args.seed, "chunk": args.chunk,
                       "data_dir": args.data_dir, "repeats": args.repeats, "workers": args.workers,
                       "reference": args.reference or f"/tmp/transferrank-scale-reference-{size}.npz"})
        text = api_report(cmd, res, before, _machine())
        out = Path(args.out or "bench/results/scale_api.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"command": cmd, **res}, indent=1, default=str))
        print(text)
        return 0
    args.out = args.out or "bench/results/scale.md"
    base = {"n": args.n, "seed": args.seed, "device": args.device, "chunk": args.chunk,
            "shortlist": args.shortlist, "calibration": args.calibration}
    before = _machine()
    print(f"[scale] per-source comparisons on {args.compare} sources ...", flush=True)
    compare = _run(compare_worker, {**base, "compare": args.compare, "old_trio": args.old_trio,
                                    "block": args.block})
    print(json.dumps(compare, indent=1), flush=True)
    sizes = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        print(f"[scale] catalogue of {size} sources ...", flush=True)
        res = _run(catalogue_worker, {**base, "size": size})
        print(json.dumps({k: v for k, v in res.items() if k != "recall_table"}), flush=True)
        sizes.append(res)
    text = report(cmd, args, compare, sizes, before, _machine())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "compare": compare, "sizes": sizes}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
