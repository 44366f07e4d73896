"""``transferrank`` command line: serve, rank (no server), keys, migrate.

    transferrank serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR]
    transferrank rank FILE --candidates models|tasks [--estimators a,b] [--top-k K] [--json] [--data-dir DIR]
                      [--sources a,b] [--prefilter-k K]
    transferrank keys create --owner NAME --scopes read,write[,admin] [--data-dir DIR]
    transferrank keys list | keys revoke KEY_ID
    transferrank migrate [--revision head] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _settings(args, **extra):
    from app.core.config import Settings

    data_dir = getattr(args, "data_dir", None)
    if data_dir:  # encoders keep their own caches (distilled model2vec) in the data dir too
        os.environ["TRANSFERRANK_DATA_DIR"] = str(data_dir)
    return Settings.from_env(data_dir=data_dir, **extra)


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_serve(args) -> int:
    import uvicorn

    from app.main import create_app

    os.environ.setdefault("TRANSFERRANK_WARM_UP", "1")
    settings = _settings(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app = create_app(settings)
    _print_err(f"TransferRank on http://{args.host}:{args.port} (data dir {settings.data_dir.resolve()}; "
               f"docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _format_table(result: dict) -> str:
    ranking = result.get("ranking", [])
    ests = result.get("estimators", [])
    head = ["rank", "source", "score"] + ests
    rows = [[str(r["rank"]), r["source"], "-" if r.get("score") is None else f"{r['score']:.3f}"]
            + ["-" if r["scores"].get(e) is None else f"{r['scores'][e]:.4f}" for e in ests] for r in ranking]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    t = result.get("target", {})
    lines.append(f"\ntarget {t.get('name')} (n={t.get('n_examples')}, C={t.get('n_classes')}); "
                 f"{result.get('computed', 0)} score(s) computed, {result.get('cached', 0)} from cache")
    return "\n".join(lines)


def cmd_rank(args) -> int:
    from app.core.errors import ServiceError
    from app.services.context import Context
    from app.services.oneshot import RankingFailed, rank_bytes

    path = Path(args.file)
    if not path.is_file():
        _print_err(f"error: no such file: {path}")
        return 2
    ests = [e.strip() for e in args.estimators.split(",") if e.strip()] if args.estimators else None
    sources = [x.strip() for x in args.sources.split(",") if x.strip()] if args.sources else None
    ctx = Context.open(_settings(args, log_level="WARNING") if args.json else _settings(args))
    try:
        ds, created, out = rank_bytes(ctx, path.read_bytes(), path.name, candidates=args.candidates,
                                      estimators=ests, top_k=args.top_k, prefilter_k=args.prefilter_k,
                                      sources=sources)
        if not args.json:
            _print_err(f"dataset {ds.id} ({'new' if created else 'already stored'}): n={ds.n_examples}, "
                       f"C={ds.n_classes}")
    except RankingFailed as exc:
        _print_err(f"error: {exc.detail}")
        return 1
    except ServiceError as exc:
        _print_err(f"error: {exc.detail}")
        return 2
    except ValueError as exc:
        _print_err(f"error: {exc}")
        return 2
    finally:
        ctx.close()
    if args.json:
        ranking = [{"source": r["source"], "rank": r["rank"], "score": r.get("score"), "scores": r["scores"],
                    "details": r.get("details", {})} for r in out["ranking"]]
        print(json.dumps({"ranking": ranking, "target": out.get("target"), "estimators": out.get("estimators"),
                          "computed": out.get("computed"), "cached": out.get("cached")}))
    else:
        print(_format_table(out))
    return 0


def cmd_keys(args) -> int:
    from app.core.errors import ServiceError
    from app.services import keys as keys_svc
    from app.services.context import Context

    ctx = Context.open(_settings(args), seed=False)
    try:
        if args.keys_cmd == "create":
            _info, key = keys_svc.create(ctx, args.owner, args.scopes)
            print(key)
        elif args.keys_cmd == "list":
            for k in keys_svc.list_all(ctx):
                print(f"{k['id']}  {k['owner']}  {','.join(k['scopes'])}  "
                      f"{'active' if k['active'] else 'revoked ' + k['revoked_at']}  created {k['created_at']}")
        else:
            k = keys_svc.revoke(ctx, args.key_id)
            _print_err(f"revoked key {k['id']} ({k['owner']})")
    except ServiceError as exc:
        _print_err(f"error: {exc.detail}")
        return 2
    finally:
        ctx.close()
    return 0


def cmd_migrate(args) -> int:
    from app.db.session import make_engine, upgrade

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        upgrade(settings.db_url, engine, args.revision)
    finally:
        engine.dispose()
    _print_err(f"database {settings.db_url.split('@')[-1]} at {args.revision}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferrank", description="Rank source tasks and pretrained models for "
                                "transfer learning before fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)

    def data_dir(sp):
        sp.add_argument("--data-dir", default=None, help="data directory (default $TRANSFERRANK_DATA_DIR or "
                        "./.transferrank)")

    s = sub.add_parser("serve", help="run the REST service (embedded defaults: SQLite + local workers)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    data_dir(s)
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("rank", help="rank candidates for a dataset file without a server")
    r.add_argument("file", help="CSV / JSONL / Parquet (text,label) or NPZ (features,labels)")
    r.add_argument("--candidates", choices=["models", "tasks"], required=True)
    r.add_argument("--estimators", default=None, help="comma-separated estimator names")
    r.add_argument("--top-k", type=int, default=10)
    r.add_argument("--prefilter-k", type=int, default=None, help="tasks: score only the k nearest sources")
    r.add_argument("--sources", default=None, help="comma-separated candidate names (default: all)")
    r.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    data_dir(r)
    r.set_defaults(func=cmd_rank)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key; prints the key alone on stdout")
    kc.add_argument("--owner", required=True)
    kc.add_argument("--scopes", default="read,write")
    data_dir(kc)
    kl = ksub.add_parser("list")
    data_dir(kl)
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    data_dir(kr)
    k.set_defaults(func=cmd_keys)

    m = sub.add_parser("migrate", help="apply database migrations (the service also does it on start)")
    m.add_argument("--revision", default="head")
    data_dir(m)
    m.set_defaults(func=cmd_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "rank" and args.top_k < 1:
        _print_err("error: --top-k must be >= 1")
        return 2
    if args.command != "serve":
        import logging

        from app.core.logging import setup_logging

        setup_logging("WARNING" if getattr(args, "json", False) else os.environ.get("TRANSFERRANK_LOG_LEVEL", "INFO"))
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
