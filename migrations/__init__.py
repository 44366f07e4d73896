"""Alembic migrations of the TransferRank database (``env.py``, ``versions/``).

Installed next to the ``app`` package, where ``app.db.session`` finds them; the service applies
them on start, ``transferrank migrate`` or ``alembic upgrade head`` by hand."""
