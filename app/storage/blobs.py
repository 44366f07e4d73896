"""A content-addressed blob store: every file is named by the sha256 of its bytes.

A blob key is ``"<sha256>.<ext>"`` (``npy``, ``json``, ``safetensors``); SQL rows reference
keys, the files live in ``<root>/<sha[:2]>/<key>``. Writes are atomic (temporary file in the
same directory, fsync, ``os.replace``), so a crash never leaves a half-written blob under a
real name, and writing the same content twice is a no-op. Arrays are stored with
``np.save(allow_pickle=False)`` and loaded the same way: nothing here ever unpickles.

Faults: a write that hits a full disk (``ENOSPC``) removes its temporary file and raises
``DiskFull`` (an ``OSError``, answered 507). A small reserve file (``<root>/../.reserve``) is
kept beside the store: ``release_reserve()`` frees it so that deletions (which SQLite must
journal) can still commit on a full disk; ``restore_reserve()`` puts it back when space allows.
Crash leftovers (``.tmp-*`` files, blobs no SQL row references) are listed by ``temp_files`` /
``garbage`` and removed by ``transferrank doctor --repair``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

_KEY = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,16}$")
RESERVE_BYTES = 8 * 1024 * 1024


class DiskFull(OSError):
    """No space left for a blob (``errno.ENOSPC``)."""

    def __init__(self, detail: str):
        super().__init__(errno.ENOSPC, detail)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


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
    def __init__(self, root: Path | str, reserve_bytes: int = RESERVE_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.reserve_path = self.root.parent / ".reserve"
        self.reserve_bytes = int(reserve_bytes)
        self.restore_reserve()

    # ---------------------------------------------------------------- disk-full reserve
    def restore_reserve(self) -> bool:
        """(Re)create the reserve file; False when there is no room for it now."""
        if self.reserve_bytes <= 0:
            return False
        try:
            if self.reserve_path.is_file() and self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
            with open(self.reserve_path, "wb") as fh:
                if hasattr(os, "posix_fallocate"):  # allocates the blocks without writing them
                    os.posix_fallocate(fh.fileno(), 0, self.reserve_bytes)
                else:  # pragma: no cover - non-POSIX
                    fh.write(b"\0" * self.reserve_bytes)
            return True
        except OSError:
            try:
                self.reserve_path.unlink()
            except OSError:
                pass
            return False

    def release_reserve(self) -> bool:
        """Free the reserve file (after a disk-full error); True when it existed."""
        try:
            self.reserve_path.unlink()
            return True
        except FileNotFoundError:
            return False

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
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if is_disk_full(exc):
                raise DiskFull(f"no space left to write a {len(data)}-byte blob under {self.root}") from exc
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

    def garbage(self, referenced: set[str], min_age_seconds: float = 0.0) -> list[str]:
        """Keys on disk that no SQL row references (left by a crash between blob and SQL).

        ``min_age_seconds`` skips younger files: a blob is written before the SQL row that
        references it commits, so a young unreferenced blob may belong to a write in flight."""
        now = time.time()
        out = []
        for k in self.keys():
            if k in referenced:
                continue
            try:
                if now - self.path(k).stat().st_mtime < min_age_seconds:
                    continue
            except FileNotFoundError:
                continue
            out.append(k)
        return out

    def temp_files(self, min_age_seconds: float = 0.0) -> list[Path]:
        """``.tmp-*`` files left by interrupted writes, older than ``min_age_seconds``."""
        now = time.time()
        out = []
        for sub in sorted(self.root.iterdir()) if self.root.exists() else []:
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(".tmp-"):
                    try:
                        if now - f.stat().st_mtime >= min_age_seconds:
                            out.append(f)
                    except FileNotFoundError:
                        continue
        return out


class BlobWriter(_Serializers):
    """``with store.writer() as w: key = w.put_array(a); <SQL insert>`` — if the block raises,
    every blob that did not exist before it is removed, so nothing is left half-written."""

    def __init__(self, store: BlobStore):
        self.store = store
        self.created: list[str] = []
        self._written: dict[str, tuple[bytes, str]] = {}

    def put_bytes(self, data: bytes, ext: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        existed = self.store.exists(f"{sha}.{ext}")
        key = self.store.put_bytes(data, ext)
        if not existed:
            self.created.append(key)
        self._written[key] = (data, ext)
        return key

    def restore_missing(self) -> int:
        """Call after the SQL row referencing the blobs committed: rewrite any blob a concurrent
        deletion removed meanwhile (it existed already, so its owner's deletion collected it
        before this row was visible). Returns how many were rewritten."""
        n = 0
        for key, (data, ext) in self._written.items():
            if not self.store.exists(key):
                self.store.put_bytes(data, ext)
                n += 1
        return n

    def keep_all(self) -> None:
        self.created.clear()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is not None:
            for key in self.created:
                self.store.delete(key)
        return False
