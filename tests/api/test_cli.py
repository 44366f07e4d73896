"""The ``transferrank`` command line: rank without a server (--json prints only JSON), keys."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from conftest import FAST_BASE, csv_bytes, make_texts, npz_bytes, serving


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERRANK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRANSFERRANK_BASE_ENCODER", FAST_BASE)
    monkeypatch.setenv("TRANSFERRANK_SEED_DEMO", "0")
    monkeypatch.delenv("TRANSFERRANK_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRANSFERRANK_RAY_ADDRESS", raising=False)
    return tmp_path


def test_rank_json_prints_only_json_and_uses_the_cache(env, capsys):
    path = env / "target.npz"
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    path.write_bytes(npz_bytes(features=rng.normal(size=(60, 5)), labels=y,
                               features_good=np.eye(3)[y] * 2 + rng.normal(scale=0.3, size=(60, 3))))
    assert main(["rank", str(path), "--candidates", "models", "--estimators", "logme,hscore", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # the whole stdout is one JSON document
    assert [r["rank"] for r in out["ranking"]] == [1, 2]
    assert out["ranking"][0]["source"] == "good" and set(out["ranking"][0]["scores"]) == {"logme", "hscore"}
    assert out["computed"] == 4
    assert main(["rank", str(path), "--candidates", "models", "--estimators", "logme,hscore", "--json",
                 "--top-k", "1"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["computed"] == 0 and again["cached"] == 4 and len(again["ranking"]) == 1


def test_rank_text_file_table_output(env, capsys):
    path = env / "reviews.csv"
    path.write_bytes(csv_bytes(*make_texts(45, 3)))
    assert main(["rank", str(path), "--candidates", "models", "--sources", "glove-6b-50d,tfidf-svd",
                 "--data-dir", str(env / "other")]) == 0
    out = capsys.readouterr().out
    from estimators.ranking import DEFAULT_ESTIMATORS

    cells = 2 * len(DEFAULT_ESTIMATORS["models"])  # two models x the default estimators
    assert "rank" in out and "glove-6b-50d" in out and "tfidf-svd" in out and f"{cells} score(s) computed" in out
    assert (env / "other" / "transferrank.db").exists()


def test_rank_errors_are_one_line(env, capsys):
    assert main(["rank", str(env / "missing.csv"), "--candidates", "models"]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = env / "bad.csv"
    bad.write_text("sentence,y\na,1\n")
    assert main(["rank", str(bad), "--candidates", "models"]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) text, label" in err and "Traceback" not in err
    ok = env / "ok.csv"
    ok.write_bytes(csv_bytes(*make_texts(20, 2)))
    assert main(["rank", str(ok), "--candidates", "tasks"]) == 2  # no sources without the demo
    assert "no source tasks" in capsys.readouterr().err
    assert main(["rank", str(ok), "--candidates", "models", "--estimators", "nope"]) == 2
    assert "unknown estimator" in capsys.readouterr().err


def test_keys_create_list_revoke(env, capsys):
    assert main(["keys", "create", "--owner", "alice", "--scopes", "read,write"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("trk_") and "\n" not in key
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    key_id = key.split("_")[1]
    assert key_id in listing and "alice" in listing and "read,write" in listing and key not in listing
    assert main(["keys", "create", "--owner", "bob", "--scopes", "root"]) == 2
    assert "scopes must be" in capsys.readouterr().err
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("transferrank")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("serve", "rank", "keys", "migrate"):
        assert cmd in out.stdout


def test_serve_starts_migrates_and_answers(tmp_path):
    import os
    import urllib.request

    env = dict(os.environ, TRANSFERRANK_SEED_DEMO="0", TRANSFERRANK_WARM_UP="0", TRANSFERRANK_BASE_ENCODER=FAST_BASE)
    env.pop("TRANSFERRANK_DATABASE_URL", None)
    exe = Path(sys.executable).with_name("transferrank")
    with serving(exe, tmp_path / "srv", env=env) as base:
        with urllib.request.urlopen(f"{base}/v1/sources", timeout=5) as r:
            assert "tfidf-svd" in {m["name"] for m in json.loads(r.read())["models"]}
        assert (tmp_path / "srv" / "transferrank.db").exists()
