"""Settings: every TRANSFERRANK_* variable the code reads is a Settings field, the README table is
generated from them, and invalid values fail with the variable's name."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.core.config import Settings, env_name, settings_table

ROOT = Path(__file__).resolve().parents[2]
VAR = re.compile(r"\bTRANSFERRANK_[A-Z0-9_]*[A-Z0-9]\b")


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- settings-table[^>]*-->\n(.*?)\n<!-- /settings-table -->", text, re.S)
    assert m, "README.md lost its generated configuration table markers"
    return m.group(1)


def test_readme_table_is_generated_from_settings():
    assert _readme_table() == settings_table(), "run `python -m app.core.config` and paste the table"
    documented = set(VAR.findall(_readme_table()))
    assert documented == {env_name(f) for f in Settings.model_fields}


def test_every_variable_in_the_code_is_a_setting():
    fields = {env_name(f) for f in Settings.model_fields}
    used: dict[str, str] = {}
    for folder in ("app", "estimators", "bench", "scripts", "transferrank"):
        for path in (ROOT / folder).rglob("*.py"):
            for var in VAR.findall(path.read_text(encoding="utf-8")):
                used.setdefault(var, str(path.relative_to(ROOT)))
    from transferrank.client import CLIENT_ENV  # the Python client's own variables, not the service's

    unknown = {v: p for v, p in used.items() if v not in fields | set(CLIENT_ENV)}
    assert not unknown, f"TRANSFERRANK_* variables that are not Settings fields: {unknown}"


def test_no_module_reads_transferrank_variables_from_the_environment():
    pattern = re.compile(r"(os\.environ(\.get)?|os\.getenv)\s*[\[(]\s*[\"']TRANSFERRANK_")
    offenders = [str(p.relative_to(ROOT)) for folder in ("app", "estimators", "bench", "scripts")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_from_env_reads_the_mapping_and_overrides_win(monkeypatch):
    monkeypatch.setenv("TRANSFERRANK_MAX_ROWS", "7")
    s = Settings.from_env({"TRANSFERRANK_WORKERS": "4", "TRANSFERRANK_SEED_DEMO": "false",
                           "TRANSFERRANK_DATABASE_URL": "", "TRANSFERRANK_LOG_LEVEL": "debug"}, data_dir="/tmp/x")
    assert (s.workers, s.seed_demo, s.database_url, s.log_level) == (4, False, None, "DEBUG")
    assert s.max_rows == 100_000  # an explicit mapping ignores the process environment
    assert s.data_dir == Path("/tmp/x")
    assert Settings.from_env().max_rows == 7
    assert s.replace(max_rows=10).max_rows == 10 and s.max_rows == 100_000
    with pytest.raises(ValueError, match="TRANSFERRANK_MAX_CLASSES"):
        Settings.from_env({"TRANSFERRANK_MAX_CLASSES": "1"})
    with pytest.raises(ValueError, match="TRANSFERRANK_FAISS_THREADS"):
        Settings.from_env({"TRANSFERRANK_FAISS_THREADS": "many"})


def test_base_encoder_default_is_the_registry_base():
    from app.encoders.registry import BASE_ENCODER

    assert Settings.from_env({}).base_encoder == BASE_ENCODER
