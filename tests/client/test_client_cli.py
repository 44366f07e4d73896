"""The command line beyond the core commands: --version, help on every option, --json
everywhere, the per-user default data dir, `matrix show|plot`, and --server against a live
service."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from live_server import FAST_MODELS

from app.cli import build_parser, main
from conftest import FAST_BASE, csv_bytes, make_texts, npz_bytes


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERRANK_BASE_ENCODER", FAST_BASE)
    monkeypatch.setenv("TRANSFERRANK_SEED_DEMO", "0")
    monkeypatch.delenv("TRANSFERRANK_DATA_DIR", raising=False)
    monkeypatch.delenv("TRANSFERRANK_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRANSFERRANK_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _walk(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def test_version_and_help_on_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("transferrank ")
    missing = [(" ".join(path), a.dest) for path, p in _walk(build_parser()) for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []
    rank_help = next(p for path, p in _walk(build_parser()) if path == ("rank",)).format_help()
    assert "TSV" in rank_help and "--server" in rank_help and "per-user cache dir" in rank_help


def test_default_data_dir_is_the_user_cache_not_the_cwd(env, capsys):
    target = env / "t.npz"
    y = np.arange(30) % 3
    target.write_bytes(npz_bytes(features=np.random.default_rng(0).normal(size=(30, 4)) + y[:, None], labels=y))
    assert main(["rank", str(target), "--candidates", "models", "--estimators", "logme", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ranking"][0]["source"] == "features"
    assert (env / "xdg-cache" / "transferrank" / "transferrank.db").exists()
    assert list((env / "work").iterdir()) == []  # nothing written where the command ran


def test_keys_list_says_when_empty_and_json_everywhere(env, capsys):
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no API keys yet" in out.err
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"keys": []}
    assert main(["keys", "create", "--owner", "ann", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("trk_") and created["owner"] == "ann"
    assert main(["keys", "revoke", created["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] is False
    assert main(["migrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == "head"


def test_matrix_show_and_plot_locally(env, capsys):
    path = env / "reviews.tsv"
    texts, labels = make_texts(36, 3, seed=4)
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    assert main(["rank", str(path), "--candidates", "models", "--sources", ",".join(FAST_MODELS),
                 "--estimators", "logme,hscore", "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert main(["matrix", "show", "--json"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["layout"] == "wide" and wide["index"][0] == ranking[0]["source"]
    assert main(["matrix", "show", "--layout", "long", "--estimator", "logme"]) == 0
    table = capsys.readouterr().out
    assert "logme" in table and "hscore" not in table and ranking[0]["source"] in table
    out = env / "m.png"
    assert main(["matrix", "plot", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[:4] == b"\x89PNG" and set(info["sources"]) == set(FAST_MODELS)
    assert main(["matrix", "show", "--estimator", "bogus"]) == 2
    assert "unknown estimator" in capsys.readouterr().err
    assert main(["matrix", "show", "--format", "parquet"]) == 2


def test_server_option_runs_commands_against_a_service(env, live, capsys):
    path = env / "r.csv"
    path.write_bytes(csv_bytes(*make_texts(33, 3, seed=8)))
    assert main(["rank", str(path), "--candidates", "models", "--sources", ",".join(FAST_MODELS), "--json",
                 "--server", live.url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["source"] for r in out["ranking"]} == set(FAST_MODELS)
    assert not (env / "xdg-cache").exists()  # nothing local was opened
    assert main(["rank", str(path), "--candidates", "models", "--sources", ",".join(FAST_MODELS),
                 "--server", live.url]) == 0
    assert "score(s) computed" in capsys.readouterr().out
    assert main(["matrix", "show", "--server", live.url, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["index"]) >= set(FAST_MODELS)
    png = env / "remote.png"
    assert main(["matrix", "plot", "--server", live.url, "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["rank", str(path), "--candidates", "models", "--estimators", "nope", "--server", live.url]) == 2
    assert "unknown estimator" in capsys.readouterr().err
    assert main(["keys", "list", "--server", live.url, "--json"]) == 2  # key management needs an admin key
    assert "admin API key" in capsys.readouterr().err
    from app.services import keys as keys_svc

    _info, admin = keys_svc.create(live.ctx, "ops", ["admin"])  # from here on the service requires keys
    assert main(["keys", "list", "--server", live.url, "--api-key", admin, "--json"]) == 0
    assert [k["owner"] for k in json.loads(capsys.readouterr().out)["keys"]] == ["ops"]
    assert main(["keys", "list", "--server", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_models_commands_run_against_a_service(env, live, capsys, tmp_path):
    """`models add|list|remove --server URL`: the model (a path on the server's machine) is
    registered through the API, owned by the caller, and listed / removed the same way."""
    from byo_helpers import save_tiny_bert

    from app.services import keys as keys_svc

    _info, key = keys_svc.create(live.ctx, "cli-user", ["read", "write"])  # keys may be required already
    remote = ["--server", live.url, "--api-key", key]
    bert = save_tiny_bert(tmp_path / "tiny-bert")
    assert main(["models", "add", str(bert), "--name", "remote-bert", "--kind", "transformers", *remote]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["name"] == "remote-bert" and added["dim"] > 0
    assert main(["models", "list", *remote]) == 0
    assert "remote-bert" in {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert main(["models", "remove", "remote-bert", *remote]) == 0
    capsys.readouterr()
    assert main(["models", "remove", "remote-bert", *remote]) == 2
    assert "no model named" in capsys.readouterr().err
    assert not (env / "xdg-cache").exists()  # nothing local was opened
