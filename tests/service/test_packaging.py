"""A plain (non-editable) install serves from any directory: build the wheel, install it into a
fresh virtual environment (dependencies come from this interpreter's site-packages, so nothing
is downloaded), then ``transferrank migrate`` and ``transferrank serve`` from a temporary
directory find their migrations, demo catalogue and docs assets inside the installed package."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import serving

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels)], cwd=tmp)
    wheel = next(wheels.glob("transferrank-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "migrations/env.py" in names and "migrations/versions/0001_initial_schema.py" in names
    assert any(n.startswith("app/demo/data/") for n in names)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERRANK_") and k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp, env=env)
    # then the dependencies: this interpreter's site-packages, after the venv's own (plain paths, so
    # an editable install of the checkout found there is not activated; written after the install
    # so pip neither skips nor touches the other environment's copy)
    Path(purelib, "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFERRANK_LOG_LEVEL="WARNING")
    where = _run([str(py), "-c", "import app, migrations; print(app.__file__); print(migrations.__file__)"],
                 cwd=tmp, env=env).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in where), where  # not the checkout
    return venv, tmp, env


def test_migrate_from_another_directory(installed):
    venv, tmp, env = installed
    data = tmp / "migrated"
    out = _run([str(venv / "bin" / "transferrank"), "migrate", "--data-dir", str(data)], cwd=tmp, env=env)
    assert "at head" in out.stderr
    assert (data / "transferrank.db").is_file()


def test_serve_from_another_directory(installed):
    venv, tmp, env = installed
    env = dict(env, TRANSFERRANK_WARM_UP="0", TRANSFERRANK_TRAIN_DEMO_ESMS="0")
    with serving(venv / "bin" / "transferrank", tmp / "served", env=env, cwd=tmp, timeout=180) as base:
        with urllib.request.urlopen(f"{base}/v1/sources", timeout=10) as r:
            tasks = json.loads(r.read())["tasks"]
        assert tasks and all(t["origin"] == "demo" for t in tasks)  # the packaged demo catalogue
        with urllib.request.urlopen(f"{base}/docs-assets/swagger-ui-bundle.js", timeout=10) as r:
            assert len(r.read()) > 100_000
        assert (tmp / "served" / "transferrank.db").is_file()
