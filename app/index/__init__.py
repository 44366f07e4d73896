"""FAISS task index: nearest source tasks by task embedding (the ``prefilter_k`` step)."""
from app.index.faiss_index import (
    TASK_EMBEDDINGS,
    TaskIndex,
    ids_checksum,
    register_task_embedding,
    task_embedding,
)

__all__ = [
    "TASK_EMBEDDINGS",
    "TaskIndex",
    "ids_checksum",
    "register_task_embedding",
    "task_embedding",
]
