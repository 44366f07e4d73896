"""Hostile input: every attack of ``bench.attacks.corpus()`` answers 4xx with a message a person
can act on, never 5xx, and writes nothing (SQLite and PostgreSQL)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.attacks import corpus, send, setup_ids

ATTACKS = corpus(scale=0.1)


@pytest.fixture
def hostile(make_client, db_url):
    client = make_client(database_url=db_url)
    return client, setup_ids(client)


def _counts(client) -> dict:
    from sqlalchemy import func, select

    from app.db.models import Dataset, Feedback, Ranking, SourceTask

    ctx = client.app.state.ctx
    with ctx.Session() as s:
        out = {m.__tablename__: s.scalar(select(func.count()).select_from(m))
               for m in (Dataset, Feedback, Ranking, SourceTask)}
    out["blobs"] = sorted(ctx.blobs.keys())
    return out


def test_every_attack_is_refused_with_a_message(hostile):
    client, ids = hostile
    before = _counts(client)
    failures = []
    for attack in ATTACKS:
        r = send(client, attack, ids)
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
        ok = r.status_code in attack.expect and isinstance(detail, str) and len(detail) > 10
        if not ok:
            failures.append(f"{attack.name}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    after = _counts(client)
    assert after["datasets"] == before["datasets"] and after["blobs"] == before["blobs"]
    assert after["feedback"] == before["feedback"] and after["source_tasks"] == before["source_tasks"]


def test_messages_name_the_problem(hostile):
    client, ids = hostile
    by_name = {a.name: a for a in ATTACKS}

    def detail(name):
        return send(client, by_name[name], ids).json()["detail"]

    assert "not an NPZ archive" in detail("npz: CSV named .npz")
    assert "pickle" in detail("npz: pickled object array")
    assert "TRANSFERRANK_MAX_COLUMNS" in detail("csv: 20,000 columns" if "csv: 20,000 columns" in by_name
                                               else "csv: 200,000 columns")
    assert "NUL" in detail("csv: NUL in a text")
    assert "compressed" in detail("csv: gzip named .csv")
    assert "NUL" in detail("feedback: NUL in note")
    assert "out of range" in detail("GET /v1/datasets?offset=2^63")
    assert "n_projections must be an integer in [1, 10000]" in detail("sliced_wasserstein n_projections=1e9")
    assert "not a finite number" in detail("sliced_wasserstein n_projections=Infinity")
    assert "UTF-8" in detail("csv: not UTF-8")


def test_names_from_paths_keep_their_last_part_only(hostile):
    client, _ = hostile
    texts = "\n".join(f"text {i} {'ab'[i % 2]},{'ab'[i % 2]}" for i in range(10))
    r = client.post("/v1/datasets", files={"file": ("../../../etc/passwd.csv", f"text,label\n{texts}\n".encode())})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "passwd"
    r = client.post("/v1/datasets", files={"file": ("..\\..\\evil.csv", f"text,label\n{texts}\nx,a\n".encode())})
    assert r.status_code == 201 and r.json()["name"] == "evil"


def test_limits_are_configurable(make_client):
    client = make_client(max_cell_bytes=100, max_columns=3)
    rows = "\n".join(f"{'w' * 50} {i},{i % 2}" for i in range(10))
    assert client.post("/v1/datasets", files={"file": ("ok.csv", f"text,label\n{rows}\n".encode())}).status_code == 201
    r = client.post("/v1/datasets", files={"file": ("long.csv", f"text,label\n{'w' * 200},a\nb,b\n".encode())})
    assert r.status_code == 422 and "100 bytes" in r.json()["detail"]
    r = client.post("/v1/datasets", files={"file": ("wide.csv", b"text,label,a,b\nx,a,1,2\ny,b,1,2\n")})
    assert r.status_code == 422 and "4 columns" in r.json()["detail"]
    X = np.random.default_rng(0).normal(size=(6, 3))
    import io

    buf = io.BytesIO()
    np.savez(buf, features=X, labels=np.arange(6) % 2)
    assert client.post("/v1/datasets", files={"file": ("f.npz", buf.getvalue())}).status_code == 201


def test_readers_keep_the_ordinary_cases(settings_factory):
    """The bounded readers read what the pandas-based ones read: quoted commas and newlines,
    TSV, a UTF-8 BOM, JSONL with integral float labels, Parquet with integer labels."""
    import io as _io

    import pandas as pd

    from app.core.config import Limits
    from app.services.ingest import parse_upload

    settings = settings_factory()
    lim = Limits()
    texts = ['a, "quoted" text', "two\nlines", "plain"] * 4
    labels = [0, 1, 2] * 4
    df = pd.DataFrame({"text": texts, "label": labels})
    csv = parse_upload(df.to_csv(index=False).encode(), "x.csv", settings, lim)
    assert csv.texts == texts and csv.label_names == ["0", "1", "2"]
    tsv = parse_upload(df.to_csv(index=False, sep="\t").encode(), "x.tsv", settings, lim)
    bom = parse_upload(b"\xef\xbb\xbf" + df.to_csv(index=False).encode(), "x.csv", settings, lim)
    jsonl = parse_upload(pd.DataFrame({"text": texts, "label": [float(v) for v in labels]})
                         .to_json(orient="records", lines=True).encode(), "x.jsonl", settings, lim)
    buf = _io.BytesIO()
    df.to_parquet(buf)
    pq = parse_upload(buf.getvalue(), "x.parquet", settings, lim)
    assert csv.sha256() == tsv.sha256() == bom.sha256() == jsonl.sha256() == pq.sha256()


def test_dictionary_bomb_is_refused_before_decoding(settings_factory):
    """2,000 copies of a 1 MB string (a ~50 KB Parquet file) never become 2 GB of Python strings."""
    import resource

    from app.core.config import Limits
    from app.core.errors import Invalid, TooLarge
    from app.services.ingest import parse_upload
    from bench.attacks import parquet_repeated_string

    data = parquet_repeated_string(2000, 1 << 20)
    assert len(data) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises((Invalid, TooLarge)) as err:  # refused from the dictionary's value length
        parse_upload(data, "bomb.parquet", settings_factory(), Limits())
    assert "TRANSFERRANK_MAX_CELL_BYTES" in err.value.detail
    with pytest.raises(TooLarge) as err:  # with a large cell limit, the decoded size refuses it
        parse_upload(data, "bomb.parquet", settings_factory(), Limits(max_cell_bytes=2 << 20))
    assert "TRANSFERRANK_MAX_DECOMPRESSED_BYTES" in err.value.detail
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024, f"peak RSS grew by {grown_mb:.0f} MB"
