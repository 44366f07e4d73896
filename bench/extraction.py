"""Feature-extraction throughput: local thread-pool backend vs Ray backend (texts/s).

    python bench/extraction.py                      # MiniLM, 2,000 chatterbot utterances, private Ray
    python bench/extraction.py --corpus fine_foods  # longer texts (Debian-packaged reviews)
    python bench/extraction.py --ray-address auto   # an existing cluster (`ray start --head`)
    python bench/extraction.py --save               # also bench/results/extraction.{md,json}

Each backend embeds the same texts with the same encoder after a warm-up call (weights loaded,
Ray actor started), ``--repeats`` times, local and Ray runs alternating; the best run counts. The Ray run uses one actor given
all the CPUs of this machine (or one GPU when the cluster has GPUs), so both sides have the
same compute and the ratio ``local texts/s / Ray texts/s`` is Ray's overhead: scheduling, moving
the texts and the (n, d) array through the object store, and progress relaying. A second Ray
row runs ``--jobs`` concurrent jobs (one per actor, the models-ranking pattern) to show the
parallel throughput. Ray's fixed cost per job is also measured directly with a near-free encoder
(GloVe averaging), which is robust to the CPU noise of a shared machine. On a GPU machine the same
command runs unchanged (both backends use CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def load_texts(corpus: str, n: int, seed: int = 0) -> list[str]:
    """``n`` real texts from ``app.demo.corpora`` (chatterbot-corpus needs no download)."""
    from app.demo import corpora

    texts, labels = corpora.load(corpus)
    if len(texts) > n:
        texts, labels = corpora.sample(texts, labels, n, seed=seed)
    if len(texts) < n:  # small corpus: cycle through it
        texts = [texts[i % len(texts)] for i in range(n)]
    return list(texts)


def _time(backend, encoder: str, texts: list[str], repeats: int = 1, jobs: int = 1) -> float:
    """Best wall time (s) over ``repeats`` of ``jobs`` concurrent embeddings of ``texts``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        futures = [backend.submit_embed(encoder, texts) for _ in range(jobs)]
        for f in futures:
            out = f.result()
            assert out.shape[0] == len(texts)
        best = min(best, time.perf_counter() - t0)
    return best


def token_stats(encoder: str, texts: list[str]) -> float | None:
    try:
        from app.encoders.registry import get_encoder

        enc = get_encoder(encoder)
        tok = getattr(enc, "tokenizer", None)
        if tok is None:
            return None
        ids = tok(texts, truncation=True, max_length=getattr(enc, "max_length", 256))["input_ids"]
        return sum(len(x) for x in ids) / len(ids)
    except Exception:  # statistics only
        return None


def run(args) -> dict:
    import ray

    from app.workers.local import LocalBackend
    from app.workers.ray_backend import RayBackend

    texts = load_texts(args.corpus, args.n, seed=args.seed)
    warm = texts[: min(64, len(texts))]
    cpus = os.cpu_count() or 1
    if args.ray_address in (None, "", "local"):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        cpus_per_actor = cpus
    else:
        ray.init(address=args.ray_address, log_to_driver=False)
        cpus_per_actor = args.cpus_per_actor or 1
    best: dict[str, float] = {}
    fixed = None

    def measure(key: str, backend, jobs: int = 1) -> None:
        best[key] = min(best.get(key, float("inf")), _time(backend, args.encoder, texts, 1, jobs=jobs))

    local = LocalBackend(max_workers=max(1, args.jobs))
    try:
        local.submit_embed(args.encoder, warm).result()
        device = local.describe()["devices"][0]
        # phase 1: one job, same compute; runs alternate so that load drift hits both sides
        rb = RayBackend(num_actors=1, cpus_per_actor=cpus_per_actor)
        rb.submit_embed(args.encoder, warm).result()
        info = rb.describe()
        for _ in range(args.repeats):
            measure("local1", local)
            measure("ray1", rb)
        # Ray's fixed cost per job, measured with a near-free encoder (compute ~ms, so the
        # difference is scheduling + moving texts and the result + progress relaying)
        fixed = None
        if args.overhead_encoder:
            fast = args.overhead_encoder
            local.submit_embed(fast, warm).result()
            rb.submit_embed(fast, warm).result()
            tl = [_time(local, fast, texts) for _ in range(7)]
            tr = [_time(rb, fast, texts) for _ in range(7)]
            fixed = {"encoder": fast, "local_s": float(np.median(tl)), "ray_s": float(np.median(tr))}
        rb.shutdown()
        rows = [
            {"backend": "local", "setting": f"1 job, thread pool ({device})", "jobs": 1, "seconds": best["local1"]},
            {"backend": "ray", "setting": f"1 job, 1 actor ({info['devices'][0]}, "
             f"{'1 GPU' if info['gpus'] else f'{cpus_per_actor} CPUs'})", "jobs": 1, "seconds": best["ray1"]},
        ]
        # phase 2: concurrent jobs (a models ranking submits one job per candidate encoder)
        if args.jobs > 1:
            rb = RayBackend(num_actors=args.jobs, cpus_per_actor=max(1, cpus_per_actor // args.jobs))
            for f in [rb.submit_embed(args.encoder, warm) for _ in range(args.jobs)]:
                f.result()
            for _ in range(args.repeats):
                measure("localN", local, args.jobs)
                measure("rayN", rb, args.jobs)
            rows += [
                {"backend": "local", "setting": f"{args.jobs} concurrent jobs, {args.jobs} threads",
                 "jobs": args.jobs, "seconds": best["localN"]},
                {"backend": "ray", "setting": f"{args.jobs} concurrent jobs, {rb.num_actors} actors",
                 "jobs": args.jobs, "seconds": best["rayN"]},
            ]
            rb.shutdown()
    finally:
        local.shutdown()
        ray.shutdown()

    for r in rows:
        r["texts_per_s"] = r["jobs"] * len(texts) / r["seconds"]
    local1 = rows[0]["texts_per_s"]
    extra = {"ray_fixed_cost": fixed} if fixed else {}
    ray1 = next(r for r in rows if r["backend"] == "ray" and r["jobs"] == 1)["texts_per_s"]
    return {
        "encoder": args.encoder,
        "corpus": args.corpus,
        "n_texts": len(texts),
        "mean_tokens": token_stats(args.encoder, texts),
        "cpus": cpus,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rows": rows,
        "ray_overhead_ratio": local1 / ray1,
        **extra,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"Feature extraction, encoder `{res['encoder']}`, {res['n_texts']} texts from `{res['corpus']}`"
        + (f" (mean {res['mean_tokens']:.1f} tokens)" if res.get("mean_tokens") else "")
        + f", {res['cpus']} CPUs, load average {res['load_average']:.1f} at the end.",
        "",
        "| backend | setting | seconds | texts/s |",
        "|---|---|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | {r['setting']} | {r['seconds']:.3f} | {r['texts_per_s']:.1f} |")
    lines += ["", f"Ray overhead (local texts/s / Ray texts/s, 1 job, same compute): "
              f"**{res['ray_overhead_ratio']:.3f}x**"]
    fc = res.get("ray_fixed_cost")
    if fc:
        lines += ["", f"Ray fixed cost per job ({res['n_texts']} texts, near-free encoder `{fc['encoder']}`, "
                  f"median of 7): local {1000 * fc['local_s']:.1f} ms, Ray {1000 * fc['ray_s']:.1f} ms, "
                  f"difference **{1000 * (fc['ray_s'] - fc['local_s']):.1f} ms**"]
    lines += ["", f"Command: `{res['command']}`"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="minilm-l6")
    p.add_argument("--corpus", default="chatterbot", help="an app.demo.corpora dataset name")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    p.add_argument("--jobs", type=int, default=2, help="concurrent jobs for the parallel rows (1 = skip)")
    p.add_argument("--ray-address", default=None, help="existing cluster (host:port or auto); default: private")
    p.add_argument("--cpus-per-actor", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overhead-encoder", default="glove-6b-50d",
                   help="near-free encoder to measure Ray's fixed cost per job ('' = skip)")
    p.add_argument("--save", action="store_true", help="write bench/results/extraction.{md,json}")
    args = p.parse_args(argv)
    res = run(args)
    md = to_markdown(res)
    print(md)
    if args.save:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "extraction.md").write_text("# Feature extraction: local vs Ray\n\n" + md + "\n")
        (out / "extraction.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
