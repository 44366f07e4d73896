"""Select an encoder with TransferSelector, then tune a classifier on top of it with Optuna.

    python examples/select_then_tune.py [--trials 20] [--server URL] [--data-dir DIR]

Data: the chatterbot-topics corpus shipped with the demo catalogue (540 short English
sentences, 12 topics; app/demo/README.md has its provenance and licence), split 70/30. The
selector ranks the candidate encoders on the training split only (no fine-tuning, no test
labels); then every encoder gets the same Optuna budget for a linear head on its frozen
features (ridge classifier; 3-fold CV on the training split), and the test accuracy of each
tuned head is printed, so the chosen encoder's accuracy stands beside the others'. With
``--server`` the ranking comes from that service and each Optuna trial is reported back to it
as feedback.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

CANDIDATES = ["minilm-l6", "glove-6b-50d", "tfidf-svd"]  # model2vec-minilm left out: it distils for ~1 min


def load_corpus(name: str = "chatterbot-topics") -> tuple[list[str], np.ndarray, list[str]]:
    import gzip
    import json

    raw = json.loads(gzip.open(ROOT / "app" / "demo" / "data" / f"{name}.json.gz").read())
    classes, y = np.unique(np.asarray(raw["labels"]), return_inverse=True)
    return list(raw["texts"]), y, [str(c) for c in classes]


def embed(name: str, texts: list[str]) -> np.ndarray:
    """One encoder on all texts (tf-idf + SVD is fitted on them: unsupervised, no labels)."""
    from app.encoders.registry import get_encoder

    return np.asarray(get_encoder(name).encode(texts), dtype=np.float64)


def tune(X_train, y_train, trials: int, seed: int = 0, callbacks=(), fixed=None):
    """Optuna over a linear head on the frozen features: ridge-classifier strength (log scale),
    standardisation and class weighting, scored by 3-fold CV accuracy on the training split."""
    import optuna
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(3, shuffle=True, random_state=seed)

    def model(params):
        return make_pipeline(StandardScaler(with_std=params["scale"]),
                             RidgeClassifier(alpha=params["alpha"], class_weight=params["class_weight"]))

    def objective(trial):
        params = {"alpha": trial.suggest_float("alpha", 1e-2, 1e4, log=True),
                  "scale": trial.suggest_categorical("scale", [True, False]),
                  "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"])}
        for k, v in (fixed or {}).items():
            trial.set_user_attr(k, v)
        return float(cross_val_score(model(params), X_train, y_train, cv=cv).mean())

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials, callbacks=list(callbacks))
    return study, model(study.best_params).fit(X_train, y_train)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="Optuna trials per encoder (default 20)")
    p.add_argument("--server", default=None, help="rank through this TransferRank service (default: in-process)")
    p.add_argument("--data-dir", default=None, help="in-process data dir (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFERRANK_SEED_DEMO", "0")  # models only: no demo source tasks needed
    import optuna
    from sklearn.model_selection import train_test_split

    from transferrank import TransferSelector

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    texts, y, classes = load_corpus()
    idx_train, idx_test = train_test_split(np.arange(len(texts)), test_size=0.3, stratify=y, random_state=args.seed)
    train_texts = [texts[i] for i in idx_train]
    print(f"chatterbot-topics: {len(texts)} texts, {len(classes)} topics; train {len(idx_train)}, test {len(idx_test)}")

    # 1. select: rank the encoders on the training split (no fine-tuning)
    with tempfile.TemporaryDirectory() as tmp:
        selector = TransferSelector(candidates="models", sources=CANDIDATES, server=args.server,
                                    data_dir=None if args.server else (args.data_dir or tmp))
        selector.fit(train_texts, y[idx_train])
    print(f"selected encoder: {selector.best_}")

    # 2. tune a classifier head on every encoder with the same budget; report the test accuracy
    client = None
    if args.server:
        from transferrank import Client

        client = Client(args.server)
        target = client.upload((train_texts, y[idx_train]), name="chatterbot-topics-train")
    rows = []
    for r in selector.ranking_:
        name = r["source"]
        X = embed(name, texts)
        callbacks = []
        if client is not None:
            from transferrank.integrations.optuna import FeedbackCallback

            callbacks.append(FeedbackCallback(client, target, metric="cv_accuracy", param="encoder"))
        study, head = tune(X[idx_train], y[idx_train], args.trials, args.seed, callbacks, fixed={"encoder": name})
        rows.append((r["rank"], name, r["score"], study.best_value, float(head.score(X[idx_test], y[idx_test]))))

    best_test = max(row[4] for row in rows)
    print(f"\n{'rank':>4}  {'encoder':<14} {'score':>7}  {'cv acc':>7}  {'test acc':>8}")
    for rank, name, score, cv_acc, test_acc in rows:
        mark = "  <- selected" if name == selector.best_ else ""
        print(f"{rank:>4}  {name:<14} {score:>7.3f}  {cv_acc:>7.3f}  {test_acc:>8.3f}{mark}")
    chosen = next(row for row in rows if row[1] == selector.best_)
    print(f"\nselected {selector.best_}: test accuracy {chosen[4]:.3f}; best of the {len(rows)} encoders "
          f"{best_test:.3f} (regret {best_test - chosen[4]:.3f})")
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if client is not None:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
