"""A content-addressed blob store: every file is named by the sha256 of its bytes.

A blob key is ``"<sha256>.<ext>"`` (``npy``, ``json``, ``safetensors``); SQL rows reference
keys, the files live in ``<root>/<sha[:2]>/<key>``. Writes are atomic (temporary file in the
same directory, fsync, ``os.replace``), so a crash never leaves a half-written blob under a
real name, and writing the same content twice is a no-op. Arrays are stored with
``np.save(allow_pickle=False)`` and loaded the same way: nothing here ever unpickles.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

_KEY = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,16}$")


class _Serializers:
    """Typed writes on top of ``put_bytes`` (shared by the store and its transactional writer)."""

    def put_bytes(self, data: bytes, ext: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def put_array(self, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.dtype == object:
            raise ValueError("object arrays cannot be stored (no pickles)")
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return self.put_bytes(buf.getvalue(), "npy")

    def put_json(self, obj: Any) -> str:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        return self.put_bytes(data, "json")

    def put_file(self, path: Path | str, ext: str) -> str:
        return self.put_bytes(Path(path).read_bytes(), ext)


class BlobStore(_Serializers):
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- paths
    @staticmethod
    def check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"not a blob key: {key!r} (expected '<sha256>.<ext>')")
        return key

    def path(self, key: str) -> Path:
        self.check_key(key)
        return self.root / key[:2] / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    # ---------------------------------------------------------------- writes
    def put_bytes(self, data: bytes, ext: str) -> str:
        if not re.fullmatch(r"[a-z0-9]{1,16}", ext):
            raise ValueError(f"bad blob extension {ext!r}")
        sha = hashlib.sha256(data).hexdigest()
        key = f"{sha}.{ext}"
        target = self.path(key)
        if target.is_file() and target.stat().st_size == len(data):
            return key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return key

    # ---------------------------------------------------------------- reads
    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {key} is missing from {self.root}") from None

    def get_array(self, key: str, *, mmap: bool = False) -> np.ndarray:
        p = self.path(key)
        if not p.is_file():
            raise FileNotFoundError(f"blob {key} is missing from {self.root}")
        return np.load(p, allow_pickle=False, mmap_mode="r" if mmap else None)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key).decode())

    def verify(self, key: str) -> bool:
        """True when the file exists and its bytes still hash to its name."""
        p = self.path(key)
        if not p.is_file():
            return False
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest() == key.split(".", 1)[0]

    def writer(self) -> BlobWriter:
        """A transaction helper: blobs it creates are deleted again if the block raises."""
        return BlobWriter(self)

    # ---------------------------------------------------------------- deletes
    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def keys(self) -> Iterable[str]:
        for sub in sorted(self.root.iterdir()) if self.root.exists() else []:
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if _KEY.match(f.name):
                        yield f.name

    def garbage(self, referenced: set[str]) -> list[str]:
        """Keys on disk that no SQL row references (left by a crash between blob and SQL)."""
        return [k for k in self.keys() if k not in referenced]


class BlobWriter(_Serializers):
    """``with store.writer() as w: key = w.put_array(a); <SQL insert>`` — if the block raises,
    every blob that did not exist before it is removed, so nothing is left half-written."""

    def __init__(self, store: BlobStore):
        self.store = store
        self.created: list[str] = []

    def put_bytes(self, data: bytes, ext: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        existed = self.store.exists(f"{sha}.{ext}")
        key = self.store.put_bytes(data, ext)
        if not existed:
            self.created.append(key)
        return key

    def keep_all(self) -> None:
        self.created.clear()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is not None:
            for key in self.created:
                self.store.delete(key)
        return False
