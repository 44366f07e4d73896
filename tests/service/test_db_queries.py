"""``scalars_in``: an ``IN`` over more values than the database binds in one statement (SQLite:
32,766 parameters in its own builds, 250,000 in Debian's) is sent in batches, with every row found."""
from __future__ import annotations

from sqlalchemy import select

import app.db.session as db
from app.db.models import EncoderRow
from app.db.session import make_engine, make_sessionmaker, scalars_in, upgrade


def test_an_in_over_300000_values_finds_every_row(db_url, monkeypatch):
    engine = make_engine(db_url)
    try:
        upgrade(db_url, engine)
        Session = make_sessionmaker(engine)
        names = [f"enc-{i}" for i in range(7)]
        with Session.begin() as s:
            s.add_all(EncoderRow(name=n, kind="hf") for n in names)
        wanted = [f"absent-{i}" for i in range(300_000)] + names[:5]  # more than any SQLite build binds
        query = select(EncoderRow.name).order_by(EncoderRow.name)
        with Session() as s:
            assert sorted(scalars_in(s, query, EncoderRow.name, wanted)) == names[:5]
            assert scalars_in(s, query, EncoderRow.name, []) == []
            monkeypatch.setattr(db, "IN_BATCH", 2)  # two values a batch: rows batch after batch
            assert scalars_in(s, query, EncoderRow.name, names[4::-1]) == ["enc-3", "enc-4", "enc-1", "enc-2",
                                                                              "enc-0"]
    finally:
        engine.dispose()
