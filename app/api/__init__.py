"""HTTP layer: thin FastAPI routes over ``app.services``."""
