"""examples/select_then_tune.py runs end to end on the shipped corpus, in-process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("optuna")
pytestmark = pytest.mark.slow


def _run(*args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TRANSFERRANK_LOG_LEVEL="WARNING")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "select_then_tune.py"), *args], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_example_selects_then_tunes(tmp_path):
    out = _run("--trials", "4", "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path)
    rows = re.findall(r"^\s+(\d)\s+(\S+)\s+(-?[\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert {r[1] for r in rows} == {"minilm-l6", "glove-6b-50d", "tfidf-svd"}
    selected = re.search(r"selected encoder: (\S+)", out).group(1)
    assert selected == rows[0][1] and "<- selected" in out
    assert all(0.0 <= float(r[4]) <= 1.0 for r in rows)
    assert "regret" in out
