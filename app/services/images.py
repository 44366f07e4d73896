"""Image datasets: a zip in ImageFolder layout, or Parquet with ``image`` (bytes) + ``label``.

- **Zip**: ``<class>/<file>.png|jpg|jpeg|bmp|gif|webp`` (one optional top folder above the class
  folders is allowed; ``__MACOSX`` and hidden files are ignored). The class is the folder name.
- **Parquet**: column ``image`` holding the encoded bytes (or Hugging Face ``datasets``' struct
  ``{"bytes", "path"}``) and a ``label`` column, read through ``app.services.targets`` (so
  ``task_type`` works as for text: classification, regression or multilabel).

Every image is decoded with Pillow under limits, before anything is stored:
``TRANSFERRANK_MAX_IMAGE_PIXELS`` per image (default 25 M pixels; Pillow's
``Image.MAX_IMAGE_PIXELS`` is set to it and its decompression-bomb warning is an error),
``TRANSFERRANK_MAX_IMAGE_BYTES`` per encoded file (default 20 MB), ``TRANSFERRANK_MAX_ROWS``
images, and for a zip a total uncompressed size of at most 4x ``TRANSFERRANK_MAX_UPLOAD_BYTES``
(declared sizes are checked before reading, reads are bounded). A bad image is refused with its
name and the reason.

The encoded bytes are stored as two arrays (all bytes, concatenated, uint8; offsets, int64 n + 1)
in the dataset's extra blobs ``images`` / ``image_offsets``; ``load_images`` decodes them back
into PIL images for the vision encoders on the workers.
"""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.errors import Invalid

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.db.models import Dataset
    from app.services.context import Context
    from app.services.datasets import Parsed

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
ZIP_EXPANSION = 4  # a zip may unpack to at most this many times the upload limit


def _pil(settings: Settings) -> Any:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    return Image


def decode_checked(data: bytes, what: str, settings: Settings) -> tuple[int, int]:
    """Decode one image fully under the limits; returns (width, height) or raises ``Invalid``."""
    Image = _pil(settings)
    limit = settings.max_image_pixels
    if len(data) > settings.max_image_bytes:
        raise Invalid(f"{what}: {len(data)} bytes exceed the per-image limit of {settings.max_image_bytes} "
                      "(TRANSFERRANK_MAX_IMAGE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > limit:
                    raise Invalid(f"{what}: {w}x{h} pixels exceed the limit of {limit} "
                                  "(TRANSFERRANK_MAX_IMAGE_PIXELS)")
                im.load()
    except Invalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Invalid(f"{what}: refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # UnidentifiedImageError, truncated files, ...
        raise Invalid(f"{what}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if w < 1 or h < 1:
        raise Invalid(f"{what}: empty image")
    return w, h


def is_zip(data: bytes, filename: str | None) -> bool:
    name = (filename or "").lower()
    return name.endswith(".zip") or (data[:2] == b"PK" and not name.endswith(".npz") and _zip_has_images(data))


def _zip_has_images(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(PurePosixPath(n).suffix.lower() in IMAGE_EXTS for n in z.namelist()[:1000])
    except zipfile.BadZipFile:
        return False


def parquet_has_image(data: bytes) -> bool:
    if data[:4] != b"PAR1":
        return False
    try:
        import pyarrow.parquet as pq

        return "image" in pq.read_schema(io.BytesIO(data)).names
    except Exception:
        return False


def _members(z: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, class) for the image files of an ImageFolder zip."""
    files = []
    for info in z.infolist():
        if info.is_dir():
            continue
        parts = PurePosixPath(info.filename).parts
        if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if PurePosixPath(info.filename).suffix.lower() not in IMAGE_EXTS:
            raise Invalid(f"{info.filename}: not an image file (expected {', '.join(sorted(IMAGE_EXTS))})")
        files.append((info, parts))
    if not files:
        raise Invalid("the zip holds no images; expected the ImageFolder layout <class>/<file>.png|jpg")
    depths = {len(p) for _, p in files}
    if depths == {2}:
        return [(i, p[0]) for i, p in files]
    if depths == {3} and len({p[0] for _, p in files}) == 1:  # one top folder above the classes
        return [(i, p[1]) for i, p in files]
    bad = next(i.filename for i, p in files if len(p) != 2)
    raise Invalid(f"{bad}: the zip is not in ImageFolder layout; put each image in a folder named after its "
                  "class: <class>/<file>.png")


def _pack(blobs: list[bytes]) -> dict[str, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return {"images": np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), "image_offsets": offsets}


def _parsed(fmt: str, blobs: list[bytes], sizes: list[tuple[int, int]], columns: dict[str, Any], task_type: str | None,
            settings: Settings, extra_columns: list[str]) -> Parsed:
    from app.services import targets

    n = len(blobs)
    if n < 2:
        raise Invalid(f"the upload has {n} image(s); at least 2 labelled images are needed")
    ttype, Y, names = targets.interpret(columns, task_type, settings)
    if ttype == "classification":
        from app.services.datasets import _labels

        Y, names = _labels(next(iter(columns.values())), settings)
    TP = targets.parsed_class()
    p = TP("image", fmt, Y, names, extras=_pack(blobs), columns=extra_columns, task_type=ttype, modality="image",
           image_sizes=sizes)
    return p


def parse_zip(data: bytes, settings: Settings, task_type: str | None = None) -> Parsed:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Invalid(f"not a readable zip file: {exc}") from None
    with z:
        members = _members(z)
        if len(members) > settings.max_rows:
            raise Invalid(f"{len(members)} images exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
        total = sum(i.file_size for i, _ in members)
        limit = ZIP_EXPANSION * settings.max_upload_bytes
        if total > limit:
            raise Invalid(f"the zip unpacks to {total} bytes, over the limit of {limit} "
                          f"({ZIP_EXPANSION}x TRANSFERRANK_MAX_UPLOAD_BYTES)")
        members.sort(key=lambda m: m[0].filename)
        blobs, sizes, labels = [], [], []
        for info, cls in members:
            if info.file_size > settings.max_image_bytes:
                raise Invalid(f"{info.filename}: {info.file_size} bytes exceed the per-image limit of "
                              f"{settings.max_image_bytes} (TRANSFERRANK_MAX_IMAGE_BYTES)")
            with z.open(info) as fh:
                raw = fh.read(settings.max_image_bytes + 1)  # bounded even if the header lies
            sizes.append(decode_checked(raw, info.filename, settings))
            blobs.append(raw)
            labels.append(cls)
    if task_type not in (None, "classification"):
        raise Invalid("an ImageFolder zip holds one class per image: task_type must be classification; "
                      "upload Parquet (image, label) for other target types")
    return _parsed("zip", blobs, sizes, {"label": labels}, "classification", settings, ["image", "label"])


def parse_parquet(data: bytes, settings: Settings, task_type: str | None = None) -> Parsed:
    import pandas as pd

    from app.services import targets

    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise Invalid(f"could not read the Parquet file: {str(exc).splitlines()[0][:300]}") from None
    cols = [str(c) for c in df.columns]
    lcols = targets.label_columns(cols) if task_type == "regression" else [c for c in cols if c == "label"]
    if not lcols:
        raise Invalid(f"an image Parquet file needs columns 'image' (bytes) and 'label'; found {', '.join(cols)}")
    if len(df) > settings.max_rows:
        raise Invalid(f"{len(df)} images exceed the limit of {settings.max_rows} (TRANSFERRANK_MAX_ROWS)")
    blobs, sizes = [], []
    for i, v in enumerate(df["image"].tolist()):
        if isinstance(v, dict):  # Hugging Face datasets: {"bytes": ..., "path": ...}
            v = v.get("bytes")
        if not isinstance(v, (bytes, bytearray)):
            raise Invalid(f"row {i}: column 'image' must hold the encoded image bytes (PNG/JPEG), got "
                          f"{type(v).__name__}")
        sizes.append(decode_checked(bytes(v), f"row {i}", settings))
        blobs.append(bytes(v))
    return _parsed("parquet", blobs, sizes, {c: df[c].tolist() for c in lcols}, task_type, settings, cols)


def load_images(ctx: Context, ds: Dataset) -> list[Any]:
    """The dataset's images, decoded (PIL, RGB or L as stored) in row order."""
    Image = _pil(ctx.settings)
    extras = ds.extra_blobs or {}
    if "images" not in extras:
        raise Invalid(f"dataset {ds.id} ({ds.name}) holds no images")
    raw = ctx.blobs.get_array(extras["images"])
    off = ctx.blobs.get_array(extras["image_offsets"])
    out = []
    for a, b in zip(off[:-1].tolist(), off[1:].tolist()):
        im = Image.open(io.BytesIO(raw[a:b].tobytes()))
        im.load()
        out.append(im if im.mode in ("RGB", "L") else im.convert("RGB"))
    return out
