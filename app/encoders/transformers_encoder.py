"""``transformers`` encoder kind: a Hugging Face encoder, mean-pooled sentence embeddings.

Loads ``AutoTokenizer`` / ``AutoModel`` from a local directory or a hub id. Embedding of a
text = mean of the last hidden states over its real tokens (attention mask), then L2
normalisation: the same output as sentence-transformers for ``all-MiniLM-L6-v2``.

Cost: texts are tokenised once, sorted by length and cut into batches of ``batch_size``
(dynamic padding: each batch is padded only to its longest member, so short texts cost
little); the forward passes run under ``torch.inference_mode`` on
``cuda`` when available (override with ``options["device"]`` or ``TRANSFERRANK_DEVICE``).

Offline: a local directory never touches the network; a hub id honours ``HF_HUB_OFFLINE``
(and ``TRANSFORMERS_OFFLINE``). A model that cannot be loaded raises ``ValueError`` naming
the id and the reason.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.core.config import Settings
from app.encoders.base import EncoderSpec, ProgressFn, check_texts

DEFAULT_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _pick_device(requested: str | None) -> str:
    import torch

    requested = requested or Settings.from_env().device
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class TransformersEncoder:
    """Mean-pooled, L2-normalised embeddings from a Hugging Face encoder model."""

    def __init__(self, spec: EncoderSpec):
        if not spec.path:
            raise ValueError(f"encoder {spec.name!r}: a 'transformers' encoder needs a path or hub id")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        local = Path(spec.path).expanduser()
        is_local = local.is_dir()
        source = str(local) if is_local else spec.path
        local_only = is_local or _offline()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            self.model = AutoModel.from_pretrained(source, local_files_only=local_only)
        except Exception as exc:  # OSError, HF errors, bad configs: one clear message
            hint = (
                " (HF_HUB_OFFLINE is set: only models already in the local cache can load)"
                if local_only and not is_local
                else ""
            )
            raise ValueError(
                f"cannot load transformers model {spec.path!r} for encoder {spec.name!r}{hint}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.device = _pick_device(spec.options.get("device"))
        self.model.to(self.device)
        self.model.eval()
        self.max_length = int(
            spec.options.get("max_length")
            or min(
                DEFAULT_MAX_LENGTH,
                getattr(self.tokenizer, "model_max_length", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH,
            )
        )
        self._dim = int(self.model.config.hidden_size)
        # A fast tokenizer is not safe to share between threads; torch forward passes on one
        # module from several threads only fight over the same cores: serialise encode().
        self._lock = threading.Lock()
        self._torch = torch

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def _pad(self, enc, idx: np.ndarray, width: int) -> dict:
        """Right-pad the tokenised texts ``idx`` to ``width`` (dynamic padding) as tensors."""
        torch = self._torch
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0}
        batch = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in enc:
                continue
            arr = np.full((len(idx), width), pad_values.get(key, 0), dtype=np.int64)
            for row, i in enumerate(idx):
                seq = enc[key][i]
                arr[row, : len(seq)] = seq
            batch[key] = torch.from_numpy(arr).to(self.device)
        return batch

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, progress: ProgressFn | None = None
    ) -> np.ndarray:
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(texts)
        out = np.empty((n, self._dim), dtype=np.float32)
        if n == 0:
            if progress:
                progress(1.0)
            return out
        torch = self._torch
        with self._lock, torch.inference_mode():
            enc = self.tokenizer(
                list(texts), truncation=True, max_length=self.max_length, padding=False
            )
            ids = enc["input_ids"]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
            order = np.argsort(-lengths, kind="stable")  # longest first: OOM shows up early
            done = 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = self._pad(enc, idx, int(lengths[idx].max()))
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1)
                counts = mask.sum(dim=1).clamp(min=1e-9)
                emb = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
                out[idx] = emb.float().cpu().numpy()
                done += len(idx)
                if progress:
                    progress(done / n)
        return out

