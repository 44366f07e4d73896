"""HTTP load benchmark: open-loop request rates against a TransferRank service on loopback.

Run from the repository root::

    python -m bench.load [--rate 100] [--seconds 10] [--url http://127.0.0.1:PORT]
                         [--with-job] [--api-workers N] [--out bench/results/load.md]

Without ``--url`` it starts ``transferrank serve`` itself on 127.0.0.1 (a free port, a fresh
temporary data dir with the demo catalogue, no model warm-up) and stops it at the end. Set-up:
one NPZ target (real demo MiniLM embeddings, 384 dims, 6 classes) and one tasks ranking on it,
so its scores are cached. Then, for each endpoint in turn, requests are *scheduled* at a fixed
rate (open loop: a slow answer does not delay the next request) for ``--seconds``:

* ``GET /healthz``
* ``POST /v1/rankings`` with the same body (every score cached)
* ``GET /v1/rankings/{id}``
* ``GET /v1/transfer-matrix?estimator=esm_logme``

Latency is measured from each request's scheduled time to its answer (no coordinated
omission); a request not answered within ``--timeout`` counts as an error, as does any status
other than 200 / 304. ``--with-job`` repeats the read phases while a large tasks ranking (a
second target of ``--job-rows`` rows) runs. Everything is bounded: at most rate x seconds
requests per phase, and the run stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/load.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

MAX_REQUESTS_PER_PHASE = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, api_workers: int = 1) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, TRANSFERRANK_WARM_UP="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFERRANK_LOG_LEVEL="WARNING", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", data_dir, "--log-level", "warning", "--workers", str(api_workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer from {url}/healthz within {timeout:.0f} s")


def demo_target(n: int, seed: int) -> bytes:
    from bench.scale import load_target

    X, y = load_target(n, seed)
    buf = io.BytesIO()
    np.savez(buf, features=X.astype(np.float32), labels=y)
    return buf.getvalue()


def big_target(n: int, seed: int) -> bytes:
    """A large target (demo embeddings resampled with noise) for the background job."""
    from bench.scale import load_target

    X, y = load_target(1000, seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, X.shape[0], n)
    buf = io.BytesIO()
    np.savez(buf, features=(X[idx] + 0.01 * rng.normal(size=(n, X.shape[1]))).astype(np.float32), labels=y[idx])
    return buf.getvalue()


def setup(url: str, args) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=600) as c:
        r = c.post("/v1/datasets", files={"file": ("target.npz", demo_target(args.n, args.seed))},
                   data={"name": "load-target"})
        r.raise_for_status()
        target = r.json()["id"]
        body = {"target": target, "candidates": "tasks"}
        t0 = time.perf_counter()
        r = c.post("/v1/rankings", json=body)
        r.raise_for_status()
        out = r.json()
        if r.status_code == 202:
            while True:
                job = c.get(f"/v1/jobs/{out['job']}").json()
                if job["status"] in ("done", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            if job["status"] != "done":
                raise SystemExit(f"set-up ranking failed: {job}")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = c.post("/v1/rankings", json=body)
        warm = time.perf_counter() - t0
        return {"target": target, "body": body, "ranking": out["id"], "cold_s": cold, "cached_s": warm,
                "cached_status": again.status_code}


async def _phase(url: str, method: str, path: str, rate: float, seconds: float, timeout: float,
                 body: dict | None = None) -> dict:
    import httpx

    count = int(min(MAX_REQUESTS_PER_PHASE, max(1, rate * seconds)))
    lat: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if method == "POST":
                    r = await client.post(path, json=body)
                else:
                    r = await client.get(path)
                if r.status_code in (200, 304):
                    lat.append(time.perf_counter() - scheduled)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout=seconds + timeout + 30)
        elapsed = time.perf_counter() - start
    a = np.sort(np.array(lat)) * 1000.0
    pct = (lambda q: float(np.percentile(a, q)) if a.size else float("nan"))  # noqa: E731
    label = "/v1/rankings/{id}" if path.startswith("/v1/rankings/") else path.split("?")[0]
    return {"endpoint": f"{method} {label}", "rate": rate, "requests": count, "ok": int(a.size),
            "errors": errors, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": float(a.max()) if a.size else float("nan"), "achieved_rps": a.size / elapsed}


def job_state(url: str, job: str) -> str:
    """``status progress`` of a job (the background job must still run while a phase is measured)."""
    import httpx

    j = httpx.get(f"{url}/v1/jobs/{job}", timeout=30).json()
    return f"{j.get('status')} {float(j.get('progress') or 0.0):.2f}"


def run_phases(url: str, info: dict, args, label: str, job: str | None = None) -> list[dict]:
    phases = [("GET", "/healthz", None), ("POST", "/v1/rankings", info["body"]),
              ("GET", f"/v1/rankings/{info['ranking']}", None),
              ("GET", "/v1/transfer-matrix?estimator=esm_logme", None)]
    out = []
    for method, path, body in phases:
        res = asyncio.run(_phase(url, method, path, args.rate, args.seconds, args.timeout, body))
        res["while"] = label
        if job:  # the job's state when the phase ended: still running, or the phase saw an idle service
            res["job_after"] = job_state(url, job)
        print(json.dumps(res), flush=True)
        out.append(res)
    return out


def start_job(url: str, args) -> str:
    import httpx

    with httpx.Client(base_url=url, timeout=600) as c:
        r = c.post("/v1/datasets", files={"file": ("big.npz", big_target(args.job_rows, args.seed + 1))},
                   data={"name": "load-big-target"})
        r.raise_for_status()
        r = c.post("/v1/rankings", json={"target": r.json()["id"], "candidates": "tasks",
                                         "estimators": ["esm_logme", "mmd", "frechet"]})
        r.raise_for_status()
        return r.json().get("job") or ""


def _loadavg() -> tuple[float, float] | None:
    try:
        one, five, _ = os.getloadavg()
        return one, five
    except OSError:  # pragma: no cover
        return None


def report(cmd: str, info: dict, results: list[dict], load_before: tuple[float, float] | None = None) -> str:
    lines = ["# HTTP load (bench/load.py)", "", f"Command: `{cmd}`", "",
             f"Set-up: tasks ranking of an NPZ target, cold {info['cold_s']:.2f} s; the same request again "
             f"(all cached) {info['cached_s'] * 1000:.0f} ms (status {info['cached_status']}).", "",
             "| while | endpoint | rate (req/s) | requests | ok | errors | p50 ms | p95 ms | p99 ms | max ms "
             "| job at the phase's end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {r['while']} | `{r['endpoint']}` | {r['rate']:g} | {r['requests']} | {r['ok']} | {errs} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r.get('job_after', '')} |")
    end = _loadavg()
    if end is not None:
        start = f"{load_before[0]:.2f} / {load_before[1]:.2f} at the start, " if load_before else ""
        lines += ["", f"Machine: {os.cpu_count()} CPUs, load average (1 / 5 min) {start}"
                      f"{end[0]:.2f} / {end[1]:.2f} at the end."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=None, help="an already running service (default: start one)")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--n", type=int, default=1000, help="rows of the cached target")
    p.add_argument("--with-job", action="store_true", help="repeat the phases while a large ranking runs")
    p.add_argument("--job-rows", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/load.md")
    p.add_argument("--api-workers", type=int, default=1,
                   help="API processes of the started service (serve --workers N; not with --url)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.seconds > 120:
        raise SystemExit("--rate must be > 0 and --seconds in (0, 120]")
    cmd = "python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv)
    load_before = _loadavg()
    proc = None
    tmp = None
    try:
        url = args.url
        if url is None:
            tmp = tempfile.TemporaryDirectory(prefix="transferrank-load-")
            proc, url = start_server(tmp.name, args.api_workers)
        wait_ready(url, proc)
        info = setup(url, args)
        print(json.dumps({k: v for k, v in info.items() if k != "body"}), flush=True)
        results = run_phases(url, info, args, "idle")
        if args.with_job:
            job = start_job(url, args)
            results += run_phases(url, info, args, "large job running", job)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    text = report(cmd, info, results, load_before)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
