"""Parts of the ``transferrank`` command line beyond the core commands: progress bars (rich),
commands run against a service (``--server URL``, through ``transferrank.Client``), and the
``matrix`` command (show / export / plot the transfer matrix)."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------- progress
@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True):
    """Yields ``update(fraction, message=None)`` drawing a rich bar on stderr (a no-op when
    disabled, when stderr is not a terminal, or without rich)."""
    bar = None
    if enabled:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(stderr=True)
            if console.is_terminal:
                bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                               TimeElapsedColumn(), TextColumn("{task.fields[message]}", style="dim"),
                               console=console, transient=True)
        except ImportError:
            bar = None
    if bar is None:
        yield lambda fraction, message=None: None
        return
    with bar:
        task = bar.add_task(description, total=1.0, message="")

        def update(fraction, message=None):
            bar.update(task, completed=min(max(float(fraction), 0.0), 1.0),
                       **({"message": str(message)[:60]} if message else {}))
        yield update


@contextlib.contextmanager
def status(message: str, enabled: bool = True):
    """A spinner on stderr for a step without a fraction (opening the data dir)."""
    try:
        from rich.console import Console

        console = Console(stderr=True)
    except ImportError:
        console = None
    if not enabled or console is None or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


# ---------------------------------------------------------------------- --server
def client(args):
    from transferrank import Client

    return Client(args.server, getattr(args, "api_key", None))


def run_remote(fn, args) -> int:
    """Run ``fn(client)``; the service's errors print as one line (exit 2), unreachable -> 1."""
    from transferrank import TransferRankConnectionError, TransferRankError

    try:
        with client(args) as c:
            return int(fn(c) or 0)
    except TransferRankConnectionError as exc:
        _err(f"error: {exc.detail}")
        return 1
    except TransferRankError as exc:
        _err(f"error: {exc.detail}")
        return 2


def rank_remote(args, ests, sources, emit) -> int:
    def go(c):
        path = Path(args.file)
        with progress_bar(f"ranking {args.candidates}", enabled=not args.json) as update:
            ranking = c.rank(path, candidates=args.candidates, estimators=ests, top_k=args.top_k, progress=update,
                             sources=sources, prefilter_k=args.prefilter_k,
                             bootstrap=getattr(args, "bootstrap", None))
        if not args.json:
            t = ranking.raw.get("target") or {}
            _err(f"dataset {t.get('id')} on {args.server}: n={t.get('n_examples')}, C={t.get('n_classes')}")
        emit(ranking.raw)
    return run_remote(go, args)


def keys_remote(args, emit_keys) -> int:
    def go(c):
        if args.keys_cmd == "create":
            scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
            created = c.create_key(args.owner, scopes)
            print(json.dumps(created) if args.json else created["key"])
        elif args.keys_cmd == "list":
            emit_keys(c.keys(), args.json)
        else:
            k = c.revoke_key(args.key_id)
            print(json.dumps(k)) if args.json else _err(f"revoked key {k['id']} ({k['owner']})")
    return run_remote(go, args)


def byo_remote(args) -> int:
    """``models add|list|remove`` and ``sources import`` against a service (``--server``); model
    paths are read on the server's machine, an ESM folder is zipped here and uploaded."""
    def go(c):
        if args.command == "sources":
            out = c.import_sources(args.path, base_encoder=args.base_encoder, prefix=args.prefix or None)
        elif args.models_cmd == "add":
            out = c.add_model(args.name, args.path, kind=args.kind, modality=args.modality, pooling=args.pooling,
                              licence=args.licence, layer=args.layer)
        elif args.models_cmd == "list":
            out = c.models()
        else:
            out = c.delete_model(args.name)
        print(json.dumps(out, indent=2, default=str))
    return run_remote(go, args)


# ---------------------------------------------------------------------- matrix
def add_matrix_parser(sub, data_dir, server) -> None:
    m = sub.add_parser("matrix", help="the transfer matrix: cached source x target scores (show, export, plot)")
    msub = m.add_subparsers(dest="matrix_cmd", required=True)

    def filters(sp):
        sp.add_argument("--estimator", action="append", default=None, metavar="NAME",
                        help="only this estimator (repeat for several)")
        sp.add_argument("--target", action="append", default=None, metavar="ID",
                        help="only this target dataset id or sha256 (repeat for several)")
        sp.add_argument("--source", action="append", default=None, metavar="NAME",
                        help="only this source task or model (repeat for several)")
        sp.add_argument("--value", default="score",
                        help="wide layout / plot: 'score' (combined z-score, default) or an estimator name")
        sp.add_argument("--limit", type=int, default=None, help="long: at most N entries; wide / plot: N sources")
        sp.add_argument("--offset", type=int, default=0, help="skip this many entries (long) or sources (wide)")
        data_dir(sp)
        server(sp)

    show = msub.add_parser("show", help="print the matrix (a table; --json for JSON)")
    show.add_argument("--layout", choices=["long", "wide"], default="wide",
                      help="wide: sources x targets (default); long: one row per source x target x estimator")
    show.add_argument("--format", choices=["table", "json", "csv", "parquet"], default="table",
                      help="output format (default table; parquet needs --out)")
    show.add_argument("--out", default=None, help="write to this file instead of stdout")
    show.add_argument("--json", action="store_true", help="same as --format json")
    filters(show)
    show.set_defaults(func=cmd_matrix)
    plot = msub.add_parser("plot", help="draw the matrix as a heatmap PNG (matplotlib)")
    plot.add_argument("--out", default="transfer-matrix.png", help="PNG file to write (default transfer-matrix.png)")
    plot.add_argument("--title", default=None, help="figure title")
    plot.add_argument("--json", action="store_true", help="print {\"path\", \"sources\", \"targets\"} on stdout")
    filters(plot)
    plot.set_defaults(func=cmd_matrix)


def _local_matrix(args, layout: str) -> dict:
    from app.cli import _settings
    from app.services import matrix as matrix_svc
    from app.services.startup import open_context

    with status("opening the data dir", enabled=not getattr(args, "json", False)):
        ctx = open_context(_settings(args, log_level="WARNING"), seed=False)
    try:
        data = matrix_svc.build(ctx, args.estimator, args.target, source=args.source)
    finally:
        ctx.close()
    if layout == "wide":
        return matrix_svc.wide(data, args.value, args.limit, args.offset)
    return matrix_svc.page(data, args.limit, args.offset)


def _table(data: dict) -> str:
    if data.get("layout") == "wide":
        head = ["source", *data["columns"]]
        rows = [[src, *("-" if v is None else f"{v:.3f}" for v in vals)] for src, vals in zip(data["index"],
                                                                                            data["data"])]
    else:
        head = ["target", "source", "estimator", "value", "score"]
        rows = [[e.get("target_label") or e.get("target_name") or "-", e["source"], e["estimator"] or "(observed)",
                 "-" if e["value"] is None else f"{e['value']:.4f}",
                 "-" if e["score"] is None else f"{e['score']:.3f}"] for e in data["entries"]]
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(head)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def cmd_matrix(args) -> int:
    from app.core.errors import ServiceError
    from app.services import matrix as matrix_svc

    fmt: str = "json" if getattr(args, "json", False) and args.matrix_cmd == "show" \
        else getattr(args, "format", "table")
    layout = "wide" if args.matrix_cmd == "plot" else args.layout
    if fmt == "parquet" and not args.out:
        _err("error: --format parquet writes a binary file: give --out FILE")
        return 2
    try:
        if args.server:
            def go(c):
                if args.matrix_cmd == "plot":
                    png = c.transfer_matrix_png(args.estimator, args.target, args.source, args.limit, args.value,
                                                args.title)
                    return _write_plot(args, png, None)
                data = c.transfer_matrix(args.estimator, args.target, args.source, format="json", layout=layout,
                                         limit=args.limit, offset=args.offset,
                                         value=args.value if layout == "wide" else None)
                return _emit_matrix(args, data, fmt)
            return run_remote(go, args)
        data = _local_matrix(args, layout)
        if args.matrix_cmd == "plot":
            return _write_plot(args, matrix_svc.heatmap_png(data, args.title), data)
        return _emit_matrix(args, data, fmt)
    except ServiceError as exc:
        _err(f"error: {exc.detail}")
        return 2


def _emit_matrix(args, data: dict, fmt: str) -> int:
    from app.services import matrix as matrix_svc

    if fmt == "parquet":
        Path(args.out).write_bytes(matrix_svc.to_parquet(data))
        _err(f"wrote {args.out}")
        return 0
    text = {"json": lambda: json.dumps(data), "csv": lambda: matrix_svc.to_csv(data).rstrip("\n"),
            "table": lambda: _table(data)}[fmt]()
    if args.out:
        Path(args.out).write_text(text + "\n")
        _err(f"wrote {args.out}")
    else:
        print(text)
    return 0


def _write_plot(args, png: bytes, data: dict | None) -> int:
    Path(args.out).write_bytes(png)
    if args.json:
        print(json.dumps({"path": str(Path(args.out).resolve()), "bytes": len(png),
                          "sources": data["index"] if data else None, "targets": data["columns"] if data else None}))
    else:
        _err(f"wrote {args.out}")
    return 0
