"""``transferrank`` command line: serve, rank (no server), keys, migrate.

    transferrank serve [--host 127.0.0.1] [--port 8000] [--workers N] [--data-dir DIR]
    transferrank rank FILE --candidates models|tasks [--estimators a,b] [--top-k K] [--json] [--data-dir DIR]
                      [--sources a,b] [--prefilter-k K]
    transferrank keys create --owner NAME --scopes read,write[,admin] [--data-dir DIR]
    transferrank keys list | keys revoke KEY_ID
    transferrank migrate [--revision head] [--data-dir DIR]
    transferrank models add PATH --name N [--kind K] [--modality M] [--data-dir DIR] | models list | models remove N
    transferrank sources import PATH [--base-encoder NAME] [--prefix P] [--data-dir DIR]
    transferrank matrix show|plot [--estimator E]... [--target ID]... [--source S]... [--out FILE]
    transferrank doctor [--repair] [--min-age SECONDS] [--data-dir DIR]

``--data-dir`` defaults to ``$TRANSFERRANK_DATA_DIR``, else the per-user cache dir
(``~/.cache/transferrank`` on Linux). ``--server URL`` runs rank / keys / matrix / models / sources import against a
service through the Python client. ``--json`` prints only JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.core.config import Settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """The environment's settings with the command line's options on top (passed down, never
    written back to the environment)."""
    from app.core.config import Settings

    return Settings.from_env(data_dir=getattr(args, "data_dir", None), **extra)


def serve_settings(args: argparse.Namespace) -> Settings:
    """``serve`` warms the encoders up unless ``TRANSFERRANK_WARM_UP`` says otherwise; ``host`` is the
    address it binds (open mode is allowed only on loopback)."""
    settings = _settings(args, host=getattr(args, "host", None), api_workers=getattr(args, "workers", None))
    if "warm_up" not in settings.model_fields_set:
        settings = settings.replace(warm_up=True)
    return settings


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_serve(args) -> int:
    import uvicorn

    from app.main import create_app
    from app.services import keys as keys_svc

    try:
        settings = serve_settings(args)  # ValueError names the variable, e.g. TRANSFERRANK_API_WORKERS
        keys_svc.check_settings(settings)
    except ValueError as exc:
        _print_err(f"error: {exc}")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n = settings.api_workers
    _print_err(f"TransferRank on http://{args.host}:{args.port} (data dir {settings.data_dir.resolve()}; "
               f"docs at /docs{f'; {n} API processes' if n > 1 else ''})")
    if n == 1:
        from app.services.startup import limit_api_threads

        limit_api_threads(settings)
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    return _serve_processes(settings, args)


def _serve_processes(settings: Settings, args: argparse.Namespace) -> int:
    """``serve --workers N`` (N > 1): the once-per-start work (migrations, failing an earlier
    process's unfinished jobs, housekeeping, the demo seed) runs here, once; then uvicorn starts N
    API processes (``app.main.serve_app``), each with its own job runner, worker pools and caches.
    They share the database: a job runs in the process that accepted it, its heartbeat keeps the
    others' reapers off it, and a cancellation made through any process stops it (see the README,
    "Several API processes"). The command line's settings reach them through the environment."""
    import uvicorn

    from app.core.config import env_name
    from app.main import PREPARED_ENV
    from app.services import startup

    # no job may be queued here (this process serves none): demo ESMs missing from the shipped
    # catalogue are not trained by a multi-process start (a one-process start trains them)
    startup.open_context(settings.replace(train_demo_esms=False)).close()
    os.environ.update({env_name("data_dir"): str(settings.data_dir.resolve()),
                       env_name("warm_up"): "1" if settings.warm_up else "0",
                       env_name("api_workers"): str(settings.api_workers), PREPARED_ENV: "1"})
    if settings.host is not None:
        os.environ[env_name("host")] = settings.host
    uvicorn.run("app.main:serve_app", factory=True, workers=settings.api_workers, host=args.host, port=args.port,
                log_level=args.log_level)
    return 0


def _format_table(result: dict) -> str:
    ranking = result.get("ranking", [])
    ests = result.get("estimators", [])
    head = ["rank", "source", "score", "95% interval", "~top"] + ests
    rows = [[str(r["rank"]), r["source"], "-" if r.get("score") is None else f"{r['score']:.3f}",
             "-" if not r.get("interval") else f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]",
             "yes" if r.get("tied_with_top") else ""]
            + ["-" if r["scores"].get(e) is None else f"{r['scores'][e]:.4f}" for e in ests] for r in ranking]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    t = result.get("target", {})
    lines.append(f"\ntarget {t.get('name')} (n={t.get('n_examples')}, C={t.get('n_classes')}); "
                 f"{result.get('computed', 0)} score(s) computed, {result.get('cached', 0)} from cache")
    lines += [f"warning: {w}" for w in (result.get("uncertainty") or {}).get("warnings", [])]
    return "\n".join(lines)


def cmd_rank(args) -> int:
    from app.core.errors import ServiceError
    from app.services.oneshot import RankingFailed, rank_bytes
    from app.services.startup import open_context

    path = Path(args.file)
    if not path.is_file():
        _print_err(f"error: no such file: {path}")
        return 2
    ests = [e.strip() for e in args.estimators.split(",") if e.strip()] if args.estimators else None
    sources = [x.strip() for x in args.sources.split(",") if x.strip()] if args.sources else None
    if args.server:
        from app import cli_client

        return cli_client.rank_remote(args, ests, sources, lambda out: _emit_ranking(args, out))
    from app.cli_client import progress_bar, status

    with status("opening the data dir", enabled=not args.json):
        ctx = open_context(_settings(args, log_level="WARNING") if args.json else _settings(args))
    try:
        with progress_bar(f"ranking {args.candidates}", enabled=not args.json) as update:
            ds, created, out = rank_bytes(ctx, path.read_bytes(), path.name, candidates=args.candidates,
                                          estimators=ests, top_k=args.top_k, prefilter_k=args.prefilter_k,
                                          sources=sources, progress=None if args.json else update,
                                          task_type=getattr(args, "task_type", None),
                                          bootstrap=args.bootstrap)
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
    _emit_ranking(args, out)
    return 0


def _emit_ranking(args, out: dict) -> None:
    if args.json:
        ranking = [{"source": r["source"], "rank": r["rank"], "score": r.get("score"), "scores": r["scores"],
                    "details": r.get("details", {}),
                    **{k: r[k] for k in ("interval", "p_top", "tied_with_top", "tied_by") if k in r}}
                   for r in out["ranking"]]
        print(json.dumps({"ranking": ranking, "target": out.get("target"), "estimators": out.get("estimators"),
                          "skipped": out.get("skipped", {}), "notes": out.get("notes", {}),
                          "uncertainty": out.get("uncertainty"),
                          "computed": out.get("computed"), "cached": out.get("cached")}))
    else:
        print(_format_table(out))


def _emit_keys(keys: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"keys": keys}))
        return
    if not keys:
        _print_err("no API keys yet (the service accepts every call); create one with "
                   "`transferrank keys create --owner NAME --scopes read,write`")
    for k in keys:
        print(f"{k['id']}  {k['owner']}  {','.join(k['scopes'])}  "
              f"{'active' if k['active'] else 'revoked ' + str(k['revoked_at'])}  created {k['created_at']}")


def cmd_keys(args) -> int:
    from app.core.errors import ServiceError
    from app.services import keys as keys_svc
    from app.services.startup import open_context

    if args.server:
        from app import cli_client

        return cli_client.keys_remote(args, _emit_keys)
    ctx = open_context(_settings(args), seed=False)
    try:
        if args.keys_cmd == "create":
            info, key = keys_svc.create(ctx, args.owner, args.scopes)
            if args.json:
                print(json.dumps(dict(info, key=key)))
            else:
                print(key)
                _print_err(f"key {info['id']} for owner {info['owner']} ({','.join(info['scopes'])}); it is shown "
                           "once, only its hash is stored")
        elif args.keys_cmd == "list":
            _emit_keys(keys_svc.list_all(ctx), args.json)
        else:
            k = keys_svc.revoke(ctx, args.key_id)
            print(json.dumps(k)) if args.json else _print_err(f"revoked key {k['id']} ({k['owner']})")
    except ServiceError as exc:
        _print_err(f"error: {exc.detail}")
        return 2
    finally:
        ctx.close()
    return 0


def cmd_byo(args) -> int:
    """``models add|list|remove`` and ``sources import`` on a data dir, or against a service
    with ``--server``."""
    if getattr(args, "server", None):
        from app import cli_client

        return cli_client.byo_remote(args)
    from app.core.errors import ServiceError
    from app.db.models import PUBLIC_OWNER
    from app.services import catalogue as catalogue_svc
    from app.services import models as models_svc
    from app.services.context import Context

    ctx = Context.open(_settings(args, log_level="WARNING"), seed=False)
    try:
        if args.command == "sources":
            # CLI imports and models are the public catalogue (the operator's own data dir)
            out = catalogue_svc.import_dir(ctx, Path(args.path), args.base_encoder, args.prefix,
                                           owner=PUBLIC_OWNER) \
                if Path(args.path).is_dir() else catalogue_svc.import_upload(
                    ctx, Path(args.path).read_bytes(), args.base_encoder, args.prefix, PUBLIC_OWNER)[0]
        elif args.models_cmd == "add":
            out, _ = models_svc.add(ctx, args.name, args.path, args.kind, args.modality, args.pooling, args.layer,
                                    args.licence, inline=True, owner=PUBLIC_OWNER)
        elif args.models_cmd == "list":
            out = models_svc.list_all(ctx, limit=1000)
        else:
            out = models_svc.remove(ctx, args.name)
    except (ServiceError, ValueError, OSError) as exc:
        _print_err(f"error: {getattr(exc, 'detail', exc)}")
        return 2
    finally:
        ctx.close()
    print(json.dumps(out, indent=2, default=str))
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
    where = settings.db_url.split("@")[-1]
    print(json.dumps({"database": where, "revision": args.revision})) if args.json \
        else _print_err(f"database {where} at {args.revision}")
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("transferrank")
    except Exception:  # a source checkout that is not installed
        return "0.1.0"


def cmd_doctor(args) -> int:
    from app.services.context import Context
    from app.services.doctor import check

    ctx = Context.open(_settings(args), seed=False)
    try:
        report = check(ctx, repair=args.repair, min_age_seconds=args.min_age, esm_forms=True)
    finally:
        ctx.close()
    print(json.dumps(report, indent=1))
    problems = report["temp_files"] + report["orphan_blobs"] + report["n_missing_blobs"] + report["orphan_scores"]
    return 0 if args.repair or problems == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferrank", description="Rank source tasks and pretrained models for "
                                "transfer learning before fine-tuning.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def data_dir(sp):
        sp.add_argument("--data-dir", default=None, help="data directory (default $TRANSFERRANK_DATA_DIR, else the "
                        "per-user cache dir, e.g. ~/.cache/transferrank)")

    def server(sp):
        sp.add_argument("--server", default=None, metavar="URL",
                        help="run against this TransferRank service (e.g. http://127.0.0.1:8000) instead of "
                        "the local data dir")
        sp.add_argument("--api-key", default=None, help="API key for --server (default $TRANSFERRANK_API_KEY)")

    def as_json(sp, what="the result"):
        sp.add_argument("--json", action="store_true", help=f"print only {what} as JSON on stdout")

    s = sub.add_parser("serve", help="run the REST service (embedded defaults: SQLite + local workers)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="API processes answering requests (default $TRANSFERRANK_API_WORKERS, else 1); "
                        "the job worker pool size is TRANSFERRANK_WORKERS")
    data_dir(s)
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("rank", help="rank candidates for a dataset file (in-process, or on a service with --server)")
    r.add_argument("file", help="CSV / TSV / JSONL / Parquet with columns text,label (optional text_pair), or NPZ "
                   "with arrays features,labels (optional features_<model>, probs_<model>)")
    r.add_argument("--candidates", choices=["models", "tasks"], required=True,
                   help="rank pretrained models, or the catalogue's source tasks")
    r.add_argument("--estimators", default=None, help="comma-separated estimator names (default: the default "
                   "combination for the candidate kind; list them at GET /v1/estimators)")
    r.add_argument("--top-k", type=int, default=10, help="print the best K candidates (default 10)")
    r.add_argument("--prefilter-k", type=int, default=None, help="tasks: score only the k nearest sources")
    r.add_argument("--sources", default=None, help="comma-separated candidate names (default: all)")
    r.add_argument("--task-type", choices=["classification", "regression", "multilabel"], default=None,
                   help="the target type (default: inferred when unambiguous)")
    r.add_argument("--bootstrap", type=int, default=100,
                   help="resamples for each candidate's interval and tied_with_top (0 = none)")
    as_json(r, '{"ranking": [...]}')
    data_dir(r)
    server(r)
    r.set_defaults(func=cmd_rank)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key; prints the key alone on stdout")
    kc.add_argument("--owner", required=True, help="who the key belongs to")
    kc.add_argument("--scopes", default="read,write", help="comma-separated: read, write, admin (default read,write)")
    as_json(kc, "the key and its id")
    data_dir(kc)
    server(kc)
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)")
    as_json(kl, "the keys")
    data_dir(kl)
    server(kl)
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id", help="the key's id (`keys list`)")
    as_json(kr, "the revoked key")
    data_dir(kr)
    server(kr)
    k.set_defaults(func=cmd_keys)

    mo = sub.add_parser("models", help="model candidates: add PATH --name N | list | remove NAME")
    msub = mo.add_subparsers(dest="models_cmd", required=True)
    ma = msub.add_parser("add", help="register a local transformers / sentence-transformers dir or TorchScript file")
    ma.add_argument("path", help="a local transformers / sentence-transformers directory, a TorchScript file, "
                    "or a hub id already in the local Hugging Face cache (read on this machine)")
    ma.add_argument("--name", required=True, help="the candidate's name in rankings (\"sources\")")
    ma.add_argument("--kind", choices=["transformers", "sentence-transformers", "torchscript"], default=None,
                    help="loader (default: detected from the path)")
    ma.add_argument("--modality", choices=["text", "image"], default=None,
                    help="what the model embeds (default: detected from its config)")
    ma.add_argument("--pooling", choices=["mean", "cls", "pooler"], default=None,
                    help="text transformers: how token states become one vector (default mean)")
    ma.add_argument("--layer", type=int, default=None,
                    help="text transformers: pool hidden state K (-1 the last, 0 the embeddings)")
    ma.add_argument("--licence", default=None, help="licence to record (default: the model card's)")
    mr = msub.add_parser("remove")
    mr.add_argument("name", help="the registered model to remove")
    for sp in (ma, msub.add_parser("list", help="list the model candidates"), mr):
        data_dir(sp)
        server(sp)
    mo.set_defaults(func=cmd_byo)
    so = sub.add_parser("sources", help="source catalogue: import ESMs (hf-dataset-selector layout)")
    ssub = so.add_subparsers(dest="sources_cmd", required=True)
    si = ssub.add_parser("import", help="import a folder of <name>/{config.json,model.safetensors} folders, or a zip")
    si.add_argument("path", help="a folder of hf-dataset-selector ESM folders, or a zip of them")
    si.add_argument("--base-encoder", default=None,
                    help="the base encoder the ESMs map from (default: from each config.json)")
    si.add_argument("--prefix", default="", help="prepended to each source's folder name")
    data_dir(si)
    server(si)
    so.set_defaults(func=cmd_byo)
    d = sub.add_parser("doctor", help="check the data dir and database; --repair removes temp files, orphan "
                       "blobs and scores, fails stale jobs, and re-stores ESMs written without their "
                       "canonical form with it")
    d.add_argument("--repair", action="store_true", help="fix what it finds (otherwise only report; exit 1 "
                   "when something needs repair)")
    d.add_argument("--min-age", type=float, default=3600.0,
                   help="only files older than this many seconds count as leftovers (default 3600)")
    data_dir(d)
    d.set_defaults(func=cmd_doctor)

    m = sub.add_parser("migrate", help="apply database migrations (the service also does it on start)")
    m.add_argument("--revision", default="head", help="Alembic revision (default head)")
    as_json(m, "the database and revision")
    data_dir(m)
    m.set_defaults(func=cmd_migrate)

    from app.cli_client import add_matrix_parser

    add_matrix_parser(sub, data_dir, server)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as exc:
        _print_err(f"error: {exc}")
        return 2
    if args.command == "rank" and args.top_k < 1:
        _print_err("error: --top-k must be >= 1")
        return 2
    if args.command != "serve":
        import logging

        from app.core.logging import setup_logging

        setup_logging("WARNING" if getattr(args, "json", False) else settings.log_level)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
