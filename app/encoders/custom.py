"""Bring-your-own model candidates: loaders for user models, text or image.

Kinds (``EncoderSpec.kind``) and what ``spec.options`` may hold:

``transformers`` (``options["custom"]`` true; the registry's plain ``transformers`` kind is the
  built-in MiniLM loader) -- a local Hugging Face directory (or a hub id already in the local
  cache; ``local_files_only=True`` always, nothing is fetched):
  * text: ``AutoTokenizer`` + ``AutoModel``, or ``AutoModelForSequenceClassification`` when the
    config names a ``*ForSequenceClassification`` architecture. ``pooling``: ``mean`` (over real
    tokens, default), ``cls`` (first token) or ``pooler`` (the model's pooler output; falls back
    to ``cls`` when the model has none); ``layer``: which hidden state (``-1`` = last, ``0`` = the
    embeddings); ``max_length`` (default 256); ``normalize`` (L2, default off).
  * image (``options["modality"] == "image"``): ``AutoImageProcessor`` (or, when the directory
    has none, a resize to ``config.image_size`` with mean = std = 0.5) + ``AutoModel`` /
    ``AutoModelForImageClassification``; features = the pooler output, else the chosen hidden
    state averaged over tokens (3-D) or spatial positions (4-D feature maps).
``sentence-transformers`` -- a sentence-transformers directory (``SentenceTransformer(path,
  local_files_only=True)``), its own pooling and normalisation.
``torchscript`` -- an image model saved with ``torch.jit.save`` whose ``forward(x)`` takes a float
  batch (N, C, H, W) and returns features (N, d) or ``(features, logits)``. Preprocessing comes
  from ``options`` or from a ``config.json`` extra file in the archive (``image_size``,
  ``channels``, ``mean``, ``std``, ``classes``, ``licence``): resize to ``image_size``, scale to
  [0, 1], then ``(x - mean) / std``.

Source-class probabilities: a model with a classification head (``*For*Classification`` or a
TorchScript forward returning logits) also yields ``softmax(logits)``; with
``options["with_probs"]`` true, ``encode`` returns ``[features | probs]`` side by side, (n, d + Z),
and the service splits them (``options["n_probs"] = Z``) so LEEP / NCE can score the head.

``describe()`` gives the facts recorded at registration: ``dim``, ``params``, ``n_probs``,
``family``, ``licence``, ``modality``. Forward passes run under ``torch.inference_mode`` in
batches, on CUDA when available (``options["device"]`` / ``TRANSFERRANK_DEVICE`` override).
A model that cannot be loaded raises ``ValueError`` naming the path and the loader's reason.
This module never touches the database.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.encoders.base import EncoderSpec, ProgressFn, check_texts

POOLINGS = ("mean", "cls", "pooler")
DEFAULT_MAX_LENGTH = 256


def _device(options: dict) -> str:
    from app.encoders.transformers_encoder import _pick_device

    return _pick_device(options.get("device"))


def _readme_licence(path: Path) -> str:
    """``license:`` from a model card's YAML front matter, if any."""
    readme = path / "README.md" if path.is_dir() else None
    if readme is None or not readme.is_file():
        return ""
    text = readme.read_text(errors="replace")[:20000]
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if m:
        lm = re.search(r"^licen[cs]e:\s*(.+)$", m.group(1), re.M)
        if lm:
            return lm.group(1).strip().strip("'\"")
    return ""


def _softmax(logits):
    import torch

    return torch.softmax(logits.float(), dim=-1)


def _check_images(images: Sequence) -> list:
    if isinstance(images, (str, bytes)):
        raise ValueError("images must be a sequence of PIL images, not a single value")
    images = list(images)
    from PIL import Image

    bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
    if bad:
        raise ValueError(f"image encoders take PIL images; item {bad[0]} is {type(images[bad[0]]).__name__}")
    return images


class _Base:
    """Batching, progress, device, the ``[features | probs]`` output and ``describe()``."""

    modality = "text"
    model: Any

    def __init__(self, spec: EncoderSpec):
        if not spec.path:
            raise ValueError(f"model {spec.name!r}: a {spec.kind} model needs a path")
        self.spec = spec
        self.options = dict(spec.options or {})
        self.device = _device(self.options)
        self.with_probs = bool(self.options.get("with_probs"))
        self._lock = threading.Lock()
        self._dim: int | None = None
        self.n_probs = 0
        self.family = ""
        self.licence = ""

    @property
    def dim(self) -> int:
        return int(self._dim or 0) + (self.n_probs if self.with_probs else 0)

    @property
    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def describe(self) -> dict:
        return {"dim": int(self._dim or 0), "params": self.n_params, "n_probs": int(self.n_probs),
                "family": self.family, "licence": self.licence, "modality": self.modality,
                "device": self.device}

    def _forward(self, batch: list):  # -> (features tensor (b, d), probs tensor (b, Z) or None)
        raise NotImplementedError

    def _check(self, items):
        return check_texts(items) if self.modality == "text" else _check_images(items)

    def encode(self, items: Sequence, *, batch_size: int = 32, progress: ProgressFn | None = None) -> np.ndarray:
        import torch

        items = self._check(items)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(items)
        out = np.empty((n, self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for start in range(0, n, batch_size):
                feats, probs = self._forward(list(items[start:start + batch_size]))
                feats = feats.float()
                if self.options.get("normalize"):
                    feats = torch.nn.functional.normalize(feats, p=2, dim=1)
                stop = start + feats.shape[0]
                out[start:stop, : self._dim] = feats.cpu().numpy()
                if self.with_probs and self.n_probs:
                    out[start:stop, self._dim:] = probs.float().cpu().numpy()
                if progress:
                    progress(stop / n)
        if progress and n == 0:
            progress(1.0)
        return out


def _hf_facts(config, path: Path) -> tuple[str, str]:
    family = getattr(config, "model_type", "") or ""
    base = getattr(config, "_name_or_path", "") or ""
    archs = ",".join(getattr(config, "architectures", None) or [])
    return ", ".join(x for x in (family, archs, base if base and base != str(path) else "") if x), _readme_licence(path)


def _hf_source(spec: EncoderSpec) -> tuple[str, Path]:
    local = Path(spec.path).expanduser()
    return (str(local) if local.is_dir() else spec.path), local


def _load_error(spec: EncoderSpec, what: str, exc: Exception) -> ValueError:
    return ValueError(f"cannot load {what} {spec.path!r} for model {spec.name!r} (local files only): "
                      f"{type(exc).__name__}: {str(exc).strip()[:400]}")


class HFTextEncoder(_Base):
    modality = "text"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        source, local = _hf_source(spec)
        self.pooling = self.options.get("pooling") or "mean"
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        self.layer = int(self.options.get("layer", -1))
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            head = any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))
            cls = AutoModelForSequenceClassification if head else AutoModel
            self.model = cls.from_pretrained(source, local_files_only=True)
        except Exception as exc:  # OSError, HF errors, bad configs
            raise _load_error(spec, "transformers text model", exc) from None
        self.head = head
        self.model.to(self.device).eval()
        n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        if n_layers and not -(n_layers + 1) <= self.layer <= n_layers:
            raise ValueError(f"layer {self.layer} is out of range for a model with {n_layers} layers "
                             f"(use -{n_layers + 1}..{n_layers})")
        self.max_length = int(self.options.get("max_length") or min(
            DEFAULT_MAX_LENGTH, getattr(self.tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH))
        self._dim = int(config.hidden_size)
        self.n_probs = int(config.num_labels) if head else 0
        self.family, self.licence = _hf_facts(config, local)

    def _forward(self, batch):

        enc = self.tokenizer(list(batch), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt").to(self.device)
        out = self.model(**enc, output_hidden_states=True)
        hidden = out.hidden_states[self.layer]
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None and self.layer == -1:
            feats = out.pooler_output
        elif self.pooling in ("cls", "pooler"):
            feats = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            feats = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        probs = _softmax(out.logits) if self.head else None
        return feats, probs


class HFVisionEncoder(_Base):
    modality = "image"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

        source, local = _hf_source(spec)
        self.layer = int(self.options.get("layer", -1))
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            head = any(a.endswith("ForImageClassification") for a in (getattr(config, "architectures", None) or []))
            self.model = (AutoModelForImageClassification if head else AutoModel).from_pretrained(
                source, local_files_only=True)
        except Exception as exc:
            raise _load_error(spec, "transformers vision model", exc) from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
        except Exception:  # no preprocessor_config.json: resize to the model's size, mean = std = 0.5
            self.processor = None
        self.head = head
        self.model.to(self.device).eval()
        self.size = int(self.options.get("image_size") or getattr(config, "image_size", 224) or 224)
        self.channels = int(getattr(config, "num_channels", 3) or 3)
        self.n_probs = int(config.num_labels) if head else 0
        self.family, self.licence = _hf_facts(config, local)
        import torch
        from PIL import Image

        with torch.inference_mode():  # one blank image tells the feature size
            try:
                feats, _ = self._forward([Image.new("RGB", (self.size, self.size))])
            except Exception as exc:
                raise ValueError(f"model {spec.name!r}: a forward pass on one blank image failed: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from None
        self._dim = int(feats.shape[1])

    def _pixels(self, batch):
        import torch

        if self.processor is not None:
            return self.processor(images=[im.convert("RGB") if self.channels == 3 else im for im in batch],
                                  return_tensors="pt")["pixel_values"]
        mode = "RGB" if self.channels == 3 else "L"
        arr = np.stack([np.asarray(im.convert(mode).resize((self.size, self.size)), dtype=np.float32) / 255.0
                        for im in batch])
        if arr.ndim == 3:
            arr = arr[..., None]
        return (torch.from_numpy(arr).permute(0, 3, 1, 2) - 0.5) / 0.5

    def _forward(self, batch):
        pixels = self._pixels(batch).to(self.device)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and self.layer == -1 and not self.head:
            feats = pooled.reshape(pooled.shape[0], -1)
        else:
            h = out.hidden_states[self.layer]
            feats = h.mean(dim=(2, 3)) if h.dim() == 4 else h.mean(dim=1)
        probs = _softmax(out.logits) if self.head else None
        return feats, probs


class SentenceTransformersEncoder(_Base):
    modality = "text"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(Path(spec.path).expanduser()), device=self.device,
                                             local_files_only=True)
        except Exception as exc:
            raise _load_error(spec, "sentence-transformers model", exc) from None
        self._dim = int(self.model.get_sentence_embedding_dimension() or 0)
        self.family = "sentence-transformers"
        self.licence = _readme_licence(Path(spec.path).expanduser())

    def encode(self, items, *, batch_size: int = 32, progress: ProgressFn | None = None) -> np.ndarray:
        items = check_texts(items)
        out = np.empty((len(items), int(self._dim or 0)), dtype=np.float32)
        with self._lock:
            for start in range(0, len(items), max(int(batch_size), 1)):
                chunk = items[start:start + batch_size]
                out[start:start + len(chunk)] = self.model.encode(chunk, batch_size=len(chunk), convert_to_numpy=True,
                                                                  normalize_embeddings=bool(
                                                                      self.options.get("normalize")))
                if progress:
                    progress((start + len(chunk)) / max(len(items), 1))
        return out


def torchscript_config(path: str | Path) -> dict:
    """The ``config.json`` extra file saved inside a TorchScript archive ({} when absent)."""
    import torch

    extra = {"config.json": ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception:
        return {}
    try:
        return json.loads(extra["config.json"]) if extra["config.json"] else {}
    except ValueError:
        return {}


class TorchScriptImageEncoder(_Base):
    modality = "image"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import torch

        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ValueError(f"model {spec.name!r}: no TorchScript file at {spec.path!r}")
        extra = {"config.json": ""}
        try:
            self.model = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except Exception as exc:
            raise _load_error(spec, "TorchScript model", exc) from None
        self.model.eval()
        try:
            cfg = json.loads(extra["config.json"]) if extra["config.json"] else {}
        except ValueError:
            cfg = {}
        cfg.update({k: v for k, v in self.options.items() if k in ("image_size", "channels", "mean", "std")})
        self.size = int(cfg.get("image_size", 224))
        self.channels = int(cfg.get("channels", 3))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        self.mean = np.asarray(cfg.get("mean", [0.5] * self.channels), dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(cfg.get("std", [0.5] * self.channels), dtype=np.float32).reshape(-1, 1, 1)
        if np.any(self.std <= 0):
            raise ValueError("std must be > 0")
        self.family = str(cfg.get("family", "torchscript"))
        self.licence = str(cfg.get("licence", ""))
        self.classes = list(cfg.get("classes", []))
        # one dummy batch tells the output layout: features, or (features, logits)
        with torch.inference_mode():
            try:
                out = self.model(torch.zeros(2, self.channels, self.size, self.size, device=self.device))
            except Exception as exc:
                raise ValueError(f"model {spec.name!r}: forward on a (2, {self.channels}, {self.size}, {self.size}) "
                                 f"batch failed ({type(exc).__name__}: {str(exc)[:300]}); set image_size / channels "
                                 "in options or in the archive's config.json") from None
        feats, logits = self._split(out)
        self._dim = int(feats.reshape(2, -1).shape[1])
        self.n_probs = int(logits.shape[1]) if logits is not None else 0

    def _split(self, out):
        import torch

        if isinstance(out, (tuple, list)):
            if len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
                raise ValueError(f"model {self.spec.name!r}: forward must return features or (features, logits)")
            return out[0], out[1]
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"model {self.spec.name!r}: forward returned {type(out).__name__}, not a tensor")
        return out, None

    def _forward(self, batch):
        import torch

        mode = "RGB" if self.channels == 3 else "L"
        arr = np.stack([np.asarray(im.convert(mode).resize((self.size, self.size)), dtype=np.float32) / 255.0
                        for im in batch])
        arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
        x = torch.from_numpy((arr - self.mean) / self.std).to(self.device)
        feats, logits = self._split(self.model(x))
        return feats.reshape(feats.shape[0], -1), (_softmax(logits) if logits is not None else None)


def build(spec: EncoderSpec):
    """The loader for a user model spec (see the module docstring)."""
    modality = (spec.options or {}).get("modality", "text")
    if spec.kind == "torchscript":
        if modality != "image":
            raise ValueError("TorchScript models are taken for images only; export a text model as a "
                             "transformers or sentence-transformers directory")
        return TorchScriptImageEncoder(spec)
    if spec.kind == "sentence-transformers":
        if modality != "text":
            raise ValueError("a sentence-transformers model embeds texts: use modality 'text'")
        return SentenceTransformersEncoder(spec)
    if spec.kind == "transformers":
        return HFVisionEncoder(spec) if modality == "image" else HFTextEncoder(spec)
    raise ValueError(f"unknown model kind {spec.kind!r}: transformers, sentence-transformers or torchscript")


def guess_kind(path: str | Path) -> str:
    """``torchscript`` for a file, ``sentence-transformers`` for a directory with
    ``modules.json``, else ``transformers``."""
    p = Path(path).expanduser()
    if p.is_file():
        return "torchscript"
    if (p / "modules.json").is_file() or (p / "config_sentence_transformers.json").is_file():
        return "sentence-transformers"
    return "transformers"


def guess_modality(path: str | Path, kind: str) -> str:
    """``image`` for TorchScript and for HF directories with an image processor or a vision
    config (``num_channels`` / ``image_size``), else ``text``."""
    p = Path(path).expanduser()
    if kind == "torchscript":
        return "image"
    if kind == "sentence-transformers":
        return "text"
    if (p / "preprocessor_config.json").is_file() and not (p / "tokenizer_config.json").is_file():
        return "image"
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return "text"
    return "image" if ("num_channels" in cfg or "image_size" in cfg) and "vocab_size" not in cfg else "text"
