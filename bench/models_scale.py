"""Models-ranking scale benchmark: one large text target ranked over the service's encoders.

Run from the repository root::

    python -m bench.models_scale [--corpus fortunes] [--n 0] [--models a,b,...]
                                 [--bootstrap 100] [--settle 5] [--out bench/results/models_scale.md]

It runs the service in this process (``app.main.create_app`` on a fresh temporary data dir, the
default settings, no model warm-up, requests through FastAPI's ``TestClient``: the REST routes,
the job runner and the worker backend as ``transferrank serve`` runs them), uploads ``--n`` texts of an ``app.demo.corpora`` corpus (default: every fortune-mod
cookie, ~14.3k texts in 40 categories; ``--n 0`` = all) as a JSONL text dataset, and asks for
a ``candidates: "models"`` ranking (after a ``--warm-n``-text one that loads the encoders) (the service's enabled text encoders, or ``--models``) with
the default estimators. While the job runs it polls ``GET /v1/jobs/{id}`` every 0.2 s and the
process's RSS (``/proc/self/status``). It reports

* extraction seconds per encoder and scoring seconds per estimator (the ranking's ``timings``),
  their ratio (the issue-11 target: scoring <= 10 % of extraction);
* the service's RSS (its process + worker processes) before the request, its peak (``VmHWM``) and after the job (``--settle``
  seconds later) -- target: back within 10 % of the start;
* every distinct job message (the progress phases) and the longest time the job's
  (progress, message) stood still.

Writes ``--out`` (markdown, with the command) and the raw numbers next to it (``.json``). The
service runs with its own defaults (2 local workers, torch's default threads); the timings
depend on the machine's load, which is reported.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if not __package__:  # run as `python bench/models_scale.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

def _status_mb(pid: int | str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_mb() -> dict[str, Any]:
    """VmRSS and VmHWM (peak) of this process (the service runs in it) plus its worker processes
    (``TRANSFERRANK_WORKER_PROCESSES``), MB: the sums over the processes; ``parts``: each
    process's VmRSS, this one first."""
    total: dict[str, Any] = dict(_status_mb("self"))
    total["processes"] = 1
    parts = [round(total["VmRSS"], 1)]
    for pid in _descendants(os.getpid()):
        try:
            st = _status_mb(pid)
        except OSError:  # ended meanwhile
            continue
        total["processes"] += 1
        parts.append(round(st.get("VmRSS", 0.0), 1))
        for k, v in st.items():
            total[k] = total.get(k, 0.0) + v
    total["parts"] = parts
    return total


def load_corpus(name: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from app.demo import corpora

    texts, labels = corpora.load(name)
    if n and len(texts) > n:
        texts, labels = corpora.sample(texts, labels, n, seed=seed)
    return list(texts), list(labels)


def jsonl(texts: list[str], labels: list[str]) -> bytes:
    buf = io.StringIO()
    for t, lab in zip(texts, labels, strict=True):
        buf.write(json.dumps({"text": t, "label": lab}) + "\n")
    return buf.getvalue().encode()


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts, labels = load_corpus(args.corpus, args.n, args.seed)
    n_texts = len(texts)
    tmp = tempfile.TemporaryDirectory(prefix="transferrank-models-scale-")
    try:
        from fastapi.testclient import TestClient

        from app.core.config import Settings
        from app.main import create_app

        settings = Settings.from_env(data_dir=Path(tmp.name), warm_up=False)
        with TestClient(create_app(settings)) as c:
            c.get("/healthz").raise_for_status()
            cold = rss_mb()
            if args.warm_n:  # a small ranking first: the encoders loaded, as in a service that has served one
                wt, wl = load_corpus(args.corpus, args.warm_n, args.seed + 1)
                r = c.post("/v1/datasets", files={"file": ("warm.jsonl", jsonl(wt, wl))}, data={"name": "warm"})
                r.raise_for_status()
                warm_body: dict[str, Any] = {"target": r.json()["id"], "candidates": "models", "bootstrap": 0}
                if args.models:
                    warm_body["sources"] = args.models.split(",")
                r = c.post("/v1/rankings", json=warm_body)
                r.raise_for_status()
                while r.json().get("job") and c.get(f"/v1/jobs/{r.json()['job']}").json()["status"] in (
                        "queued", "running"):
                    time.sleep(0.5)
            r = c.post("/v1/datasets", files={"file": ("target.jsonl", jsonl(texts, labels))},
                       data={"name": f"{args.corpus}-{len(texts)}"})
            r.raise_for_status()
            del texts
            time.sleep(args.settle)
            start = rss_mb()
            body: dict[str, Any] = {"target": r.json()["id"], "candidates": "models", "bootstrap": args.bootstrap}
            if args.models:
                body["sources"] = args.models.split(",")
            if args.estimators:
                body["estimators"] = args.estimators.split(",")
            t0 = time.perf_counter()
            r = c.post("/v1/rankings", json=body)
            r.raise_for_status()
            created = r.json()
            trace: list[tuple[float, float, str | None, float]] = []  # t, progress, message, RSS MB
            job: dict[str, Any] = {"status": "done"}
            if created.get("job"):
                while True:
                    job = c.get(f"/v1/jobs/{created['job']}").json()
                    trace.append((time.perf_counter() - t0, float(job["progress"]), job.get("message"),
                                  rss_mb()["VmRSS"]))
                    if job["status"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(args.poll)
            wall = time.perf_counter() - t0
            if job["status"] != "done":
                raise SystemExit(f"the ranking job ended {job['status']}: {job.get('error')}")
            ranking = c.get(f"/v1/rankings/{created['id']}").json()
            after = rss_mb()
            time.sleep(args.settle)
            end = rss_mb()
    finally:
        tmp.cleanup()
    # phases: distinct messages in order; stall: the longest time (progress, message) stood still
    phases: list[str] = []
    stall, last_change, last_state = 0.0, 0.0, None
    for t, p, m, _ in trace:
        if m and (not phases or phases[-1] != m):
            phases.append(m)
        if (p, m) != last_state:
            stall = max(stall, t - last_change)
            last_change, last_state = t, (p, m)
    timings = dict(ranking.get("timings") or {})
    timings["scoring_cells_s"] = {f"`{est}` on `{item['source']}`": d["seconds"] for item in ranking.get("ranking", [])
                                  for est, d in (item.get("details") or {}).items() if "seconds" in d}
    extraction = timings.get("extraction_s") or {}
    scoring = timings.get("scoring_s") or {}
    ext_total = float(timings.get("extraction_wall_s") or sum(extraction.values()) or 0.0)
    score_total = float(sum(scoring.values()) + (timings.get("bootstrap_s") or 0.0))
    return {
        "corpus": args.corpus, "n_texts": n_texts, "n_classes": len(set(labels)),
        "models": [it["source"] for it in ranking.get("ranking", [])],
        "estimators": ranking.get("estimators"), "bootstrap": args.bootstrap,
        "wall_s": wall, "ranking_seconds": ranking.get("seconds"), "timings": timings,
        "extraction_total_s": ext_total, "scoring_total_s": score_total,
        "scoring_over_extraction": score_total / ext_total if ext_total else None,
        "rss_mb": {"cold": cold["VmRSS"], "start": start["VmRSS"], "peak": after["VmHWM"], "at_done": after["VmRSS"],
                   "end": end["VmRSS"]},
        "rss_end_over_start": end["VmRSS"] / start["VmRSS"], "processes": end["processes"],
        "rss_parts_mb": {"start": start["parts"], "end": end["parts"]},
        "phases": phases, "longest_still_s": stall, "polls": len(trace),
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "command": "python -m bench.models_scale " + " ".join(sys.argv[1:]),
    }


def to_markdown(res: dict[str, Any]) -> str:
    t = res["timings"]
    lines = [
        "# Models ranking at scale (bench/models_scale.py)", "",
        f"Command: `{res['command']}`", "",
        f"Target: `{res['corpus']}`, {res['n_texts']:,} texts, {res['n_classes']} classes; candidates "
        f"{', '.join(f'`{m}`' for m in res['models'])}; estimators {res['estimators']}, bootstrap B = "
        f"{res['bootstrap']}. Through the REST routes (in-process service, embedded mode, local workers); "
        f"{res['cpus']} CPUs, load average {res['load_average'][0]:.2f} / {res['load_average'][1]:.2f} at the end.",
        "", f"Wall time of the request: {res['wall_s']:.1f} s (the job reports {res['ranking_seconds']} s).", "",
        "| phase | item | seconds |", "|---|---|---:|",
    ]
    for enc, s in (t.get("extraction_s") or {}).items():
        lines.append(f"| extraction | `{enc}` | {s:.2f} |")
    if t.get("extraction_wall_s") is not None:
        lines.append(f"| extraction | all encoders (wall, concurrent) | {t['extraction_wall_s']:.2f} |")
    for est, s in (t.get("scoring_s") or {}).items():
        lines.append(f"| scoring | `{est}` (all candidates) | {s:.2f} |")
    for cell, s in (t.get("scoring_cells_s") or {}).items():
        lines.append(f"| scoring | {cell} | {s:.2f} |")
    if t.get("bootstrap_s") is not None:
        lines.append(f"| scoring | bootstrap (B resamples, all cells) | {t['bootstrap_s']:.2f} |")
    ratio = res["scoring_over_extraction"]
    rss = res["rss_mb"]
    lines += [
        "", f"**Scoring / extraction: {res['scoring_total_s']:.2f} s / {res['extraction_total_s']:.2f} s = "
        + (f"{100 * ratio:.1f} %**" if ratio is not None else "n/a**") + " (target <= 10 %).", "",
        f"Service RSS before anything was loaded: {rss['cold']:.0f} MB; after a {res['warm_n']}-text models "
        "ranking (encoders loaded, as in a service that has served one) it is the start below.", "",
        f"RSS summed over the service's {res['processes']} process(es) (the API process and its worker "
        "processes); peak = the sum of each process's own peak.", "",
        f"**Service RSS: start {rss['start']:.0f} MB, peak {rss['peak']:.0f} MB, at the end of the job "
        f"{rss['at_done']:.0f} MB, {res.get('settle', 5)} s later {rss['end']:.0f} MB = "
        f"{100 * (res['rss_end_over_start'] - 1):+.1f} % of the start** (target within 10 %).", "",
        "Per process (MB, the service's API process first, then its worker processes): start "
        f"{res.get('rss_parts_mb', {}).get('start')}, end {res.get('rss_parts_mb', {}).get('end')}.", "",
        f"Progress: {res['polls']} polls of `GET /v1/jobs/{{id}}`; longest time the job's (progress, message) "
        f"stood still: {res['longest_still_s']:.1f} s. Distinct messages, in order ({len(res['phases'])}):", "",
    ]
    shown = res["phases"] if len(res["phases"]) <= 60 else res["phases"][:30] + ["..."] + res["phases"][-30:]
    lines += [f"- {m}" for m in shown]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="fortunes", help="an app.demo.corpora dataset name")
    p.add_argument("--n", type=int, default=0, help="texts (stratified sample); 0 = the whole corpus")
    p.add_argument("--models", default="", help="comma-separated encoder names (default: every enabled one)")
    p.add_argument("--estimators", default="", help="comma-separated estimators (default: the service's default)")
    p.add_argument("--bootstrap", type=int, default=100, help="the ranking's bootstrap B (service default 100)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before the start / end RSS readings")
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--warm-n", type=int, default=200,
                   help="texts of a small ranking run first, so that the encoders are loaded (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/models_scale.md")
    args = p.parse_args(argv)
    if args.n < 0 or args.bootstrap < 0 or args.settle < 0 or args.poll <= 0:
        raise SystemExit("--n, --bootstrap and --settle must be >= 0, --poll > 0")
    res = run(args)
    res["settle"], res["warm_n"] = args.settle, args.warm_n
    text = to_markdown(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
