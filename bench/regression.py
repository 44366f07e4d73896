"""Regression targets: LogME with ``regression=True`` against every other estimator.

Joins the regression targets of ``bench.image_zoo2`` (rotation angle, zoom factor, horizontal
shift of MNIST / Fashion-MNIST images; 12 image models; gold = test R^2 after LP-FT, 3 seeds)
and ``bench.text_models`` (tweet log-favourites, tweet year, paragraph position in an Austen
novel; 8 text encoders; gold = ridge-probe test R^2, 3 seeds of the split). LogME is the one
estimator of the library defined for real-valued targets (``regression=True``: the evidence of
a Bayesian linear regression of the standardised target); every other estimator sees the target
binned into 5 quantiles (``logme_binned`` is LogME on those bins, for comparison).

    python -m bench.regression     # seconds: score tables -> bench/results/regression.{md,json}
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import common, scoretables

TABLES = ("image_zoo2_regression", "text_models_regression")


def run(out_dir: Path = common.RESULTS_DIR, scores_dir: Path = common.SCORES_DIR) -> dict:
    t0 = time.time()
    docs = [scoretables.load(n, scores_dir) for n in TABLES if (scores_dir / f"{n}.json").exists()]
    if not docs:
        raise SystemExit("no regression score tables: run `python -m bench.image_zoo2 rescore` and "
                         "`python -m bench.text_models rescore` first")
    doc = scoretables.merge("regression", docs)
    notes = ("Targets `image_zoo2_regression/*`: 12 image models (`bench/results/image_zoo2.md`), 100 "
             "training images, gold = test R^2 after LP-FT. Targets `text_models_regression/*`: 8 text "
             "encoders (`bench/results/text_models.md`), 160 training texts, gold = RidgeCV probe "
             "R^2. Made from the score tables written by `python -m bench.image_zoo2 rescore` and "
             "`python -m bench.text_models rescore`. `default` here = the library's `models` set "
             "(LogME with `regression=True`, N-LEEP and, for image models, LEEP on the binned target).")
    return scoretables.report(doc, title="Regression targets (LogME regression vs the rest)",
                              command="python -m bench.regression", notes=notes, out_dir=out_dir,
                              elapsed=time.time() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = ap.parse_args(argv)
    run(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
