"""``transferrank serve --workers N`` and the worker-process settings."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_worker_settings_from_the_environment_and_their_bounds():
    s = Settings.from_env({"TRANSFERRANK_API_WORKERS": "3", "TRANSFERRANK_WORKER_PROCESSES": "0",
                           "TRANSFERRANK_WORKER_NICE": "12"})
    assert (s.api_workers, s.worker_processes, s.worker_nice) == (3, 0, 12)
    d = Settings.from_env({})
    assert (d.api_workers, d.worker_processes, d.worker_nice) == (1, None, 10)
    for var, value in (("TRANSFERRANK_API_WORKERS", "0"), ("TRANSFERRANK_WORKER_PROCESSES", "-1"),
                       ("TRANSFERRANK_WORKER_NICE", "20")):
        with pytest.raises(ValueError, match=var):
            Settings.from_env({var: value})


def test_get_backend_builds_the_configured_worker_processes(tmp_path):
    from app.workers import get_backend

    b = get_backend(Settings.from_env({"TRANSFERRANK_WORKERS": "3", "TRANSFERRANK_WORKER_NICE": "4"},
                                      data_dir=tmp_path))
    try:
        assert (b.max_workers, b.processes, b.nice) == (3, 3, 4) and b.describe()["processes"] == 3
    finally:
        b.shutdown()
    b = get_backend(Settings.from_env({"TRANSFERRANK_WORKER_PROCESSES": "0"}, data_dir=tmp_path))
    try:
        assert b.processes == 0 and b._procs is None
    finally:
        b.shutdown()


def test_serve_workers_flag(monkeypatch, tmp_path, capsys):
    from app.cli import build_parser, main, serve_settings

    monkeypatch.delenv("TRANSFERRANK_API_WORKERS", raising=False)
    parser = build_parser()
    assert serve_settings(parser.parse_args(["serve", "--data-dir", str(tmp_path)])).api_workers == 1
    assert serve_settings(parser.parse_args(["serve", "--workers", "3", "--data-dir", str(tmp_path)])).api_workers == 3
    monkeypatch.setenv("TRANSFERRANK_API_WORKERS", "2")
    assert serve_settings(parser.parse_args(["serve", "--data-dir", str(tmp_path)])).api_workers == 2
    assert serve_settings(parser.parse_args(["serve", "--workers", "4", "--data-dir", str(tmp_path)])).api_workers == 4
    assert main(["serve", "--workers", "0", "--port", "1", "--data-dir", str(tmp_path / "s")]) == 2
    assert "TRANSFERRANK_API_WORKERS" in capsys.readouterr().err


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _get(url: str, timeout: float = 10) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_serve_with_two_api_processes_shares_one_database(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERRANK_")}
    env.update(PYTHONPATH=str(ROOT), TRANSFERRANK_WARM_UP="0", TRANSFERRANK_SEED_DEMO="0",
               TRANSFERRANK_LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port),
                             "--data-dir", str(tmp_path / "d"), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/healthz", 2) == (200, {"status": "ok"}):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                assert time.monotonic() < deadline, "serve --workers 2 did not come up"
                time.sleep(0.3)
        servers = [p for p, cmd in _children(proc.pid) if "spawn_main" in cmd]
        assert len(servers) == 2, _children(proc.pid)
        # both processes answer from the same database: a job list and a dataset seen by every request
        boundary = "x1y2z3"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.csv\"\r\n"
                f"Content-Type: text/csv\r\n\r\ntext,label\n" + "".join(f"row {i} words,{i % 2}\n" for i in range(20))
                + f"\r\n--{boundary}--\r\n").encode()
        req = urllib.request.Request(f"{base}/v1/datasets", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status in (200, 201)
            did = json.loads(r.read())["id"]
        for _ in range(20):  # spread over both processes by the kernel: every one finds it
            assert _get(f"{base}/v1/datasets/{did}")[1]["id"] == did
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode is not None


def test_an_api_process_leaves_a_core_for_requests():
    """``serve`` (local workers): torch in an API process gets CPU count - 1 threads, or the
    setting; with Ray the process is left alone."""
    import torch

    from app.core.config import Settings
    from app.services.startup import limit_api_threads

    before = torch.get_num_threads()
    try:
        assert limit_api_threads(Settings(api_torch_threads=1)) == 1 and torch.get_num_threads() == 1
        assert limit_api_threads(Settings()) == max(1, (os.cpu_count() or 1) - 1) == torch.get_num_threads()
        assert limit_api_threads(Settings(ray_address="auto")) is None
    finally:
        torch.set_num_threads(before)
