"""SQL storage: SQLAlchemy 2 models (``models``) and engine/session helpers (``session``)."""
