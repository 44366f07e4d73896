"""Content-addressed blob store (features, labels, texts, ESM weights) in the data dir."""
from app.storage.blobs import BlobStore

__all__ = ["BlobStore"]
