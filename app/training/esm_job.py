"""The ESM training job: fine-tune the base encoder on a source task, then fit its ESM.

An Embedding-Space Map (ESM; Schulte et al., "Less is More: Parameter-Efficient Selection of
Intermediate Tasks for Transfer Learning", EMNLP 2024) is a linear map ``x -> W x + b`` from the
base encoder's embedding space to the space of the base encoder *fine-tuned on the source
task*. Storing the map (d*d + d floats, ~0.6 MB for d = 384) instead of the fine-tuned model
lets ESM-LogME score a target against thousands of sources with one forward pass of the base.

Steps (progress weights in brackets; the fine-tuned encoder is dropped at the end):
1. load a fresh copy of the base encoder (``app.training.finetune.load_base``) [2 %],
2. fine-tune it with a linear classification head on (texts, labels) [70 %],
3. embed the source texts with the base and with the fine-tuned encoder [25 %],
4. fit ``estimators.esm.EmbeddingSpaceMap`` (AdamW as the paper, or exact least squares) [3 %].

Runs in a worker (local thread or Ray actor): no database, no files written; the service
stores the returned arrays. Cost: the fine-tuning dominates (O(epochs * tokens) forward and
backward passes); ``metrics["seconds_<phase>"]`` reports each run.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

from app.core.progress import ProgressFn, scaled
from app.training.config import ESM_FIT_DEFAULTS, OPTION_KEYS
from app.workers.base import EsmTrainRequest, EsmTrainResult

#: fraction of the job's progress bar given to each phase
_PHASES = {"load": 0.02, "finetune": 0.70, "embed_base": 0.125, "embed_ft": 0.125, "fit": 0.03}



def _phase_progress(progress: ProgressFn | None, start: float, width: float) -> ProgressFn | None:
    return None if progress is None else scaled(progress, start, width)


def resolve_base_path(base_encoder: str, options: dict | None = None) -> Path:
    """Local checkpoint directory of registry encoder ``base_encoder`` (kind ``transformers``).

    ``options["base_path"]`` overrides the registry (a local transformers directory).
    """
    options = options or {}
    if options.get("base_path"):
        return Path(options["base_path"]).expanduser()
    from app.encoders import registry

    spec = registry.resolve(base_encoder)  # ValueError naming the known encoders
    if spec.kind != "transformers":
        raise ValueError(
            f"ESM training needs a 'transformers' base encoder to fine-tune; {base_encoder!r} is kind "
            f"{spec.kind!r}"
        )
    path = Path(spec.path).expanduser() if spec.path else None
    if path is None or not path.is_dir():
        raise ValueError(
            f"base encoder {base_encoder!r} has no local checkpoint directory ({spec.path!r}); ESM "
            "training loads it offline"
        )
    return path


def validate_request(request: EsmTrainRequest) -> tuple[list[str], np.ndarray]:
    """Check the request before any model is loaded; return (texts, labels as an int array)."""
    texts = request.texts
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    texts = list(texts)
    labels = np.asarray(list(request.labels))
    if len(texts) != labels.shape[0]:
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {labels.shape[0]}")
    if len(texts) < 2:
        raise ValueError(f"ESM training needs at least 2 examples, got {len(texts)}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
    if labels.ndim != 1:
        raise ValueError(f"labels must be one label per text, got shape {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("ESM training needs at least 2 classes in the labels")
    if request.map_fit not in ("adam", "lstsq"):
        raise ValueError(f"map_fit must be 'adam' or 'lstsq', got {request.map_fit!r}")
    if not isinstance(request.epochs, int) or request.epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {request.epochs!r}")
    if not request.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {request.learning_rate!r}")
    for name in ("max_length", "batch_size"):
        v = getattr(request, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    unknown = set(request.options or {}) - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown ESM training option(s) {sorted(unknown)}; accepted: {sorted(OPTION_KEYS)}")
    return texts, labels


def train_esm(request: EsmTrainRequest, progress: ProgressFn | None = None) -> EsmTrainResult:
    """Fine-tune ``request.base_encoder`` on the source, embed, fit the ESM; see module docstring.

    Returns ``EsmTrainResult`` with ``weight`` (d_out, d_in) and ``bias`` (d_out,) float32 such
    that ``fine_tuned(x) ~= base(x) @ weight.T + bias`` (the ``EmbeddingSpaceMap`` layout),
    ``base_embeddings`` (n, d) float32 and ``metrics``: flat scalars (losses, map fit quality
    ``map_r2`` / ``map_mse`` / ``map_cosine``, ``seconds_<phase>``).
    Raises ``ValueError`` for an invalid request or a base encoder that cannot be loaded.
    """
    from app.training import finetune
    from estimators.esm import EmbeddingSpaceMap

    texts, labels = validate_request(request)
    options = dict(request.options or {})
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    def mark(phase: str, t0: float) -> None:
        seconds[phase] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    path = resolve_base_path(request.base_encoder, options)
    try:
        model, tokenizer = finetune.load_base(path)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot load base encoder {request.base_encoder!r} from {path}: "
                         f"{type(exc).__name__}: {exc}") from None
    import torch

    # fine-tuning and both embeddings run on the worker's GPU when it has one
    device = str(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    mark("load", t0)
    if progress:
        progress(_PHASES["load"])

    t0 = time.perf_counter()
    pos = _PHASES["load"]
    extra = {k: options[k] for k in ("head_lr", "weight_decay", "warmup") if k in options}
    result = finetune.finetune_with_head(
        model, tokenizer, texts, labels.tolist(),
        epochs=request.epochs, lr=request.learning_rate, max_length=request.max_length,
        batch_size=request.batch_size, train_layers=request.train_layers, seed=request.seed,
        progress=_phase_progress(progress, pos, _PHASES["finetune"]), device=device, **extra,
    )
    mark("finetune", t0)
    pos += _PHASES["finetune"]

    # Both embeddings with the same function and settings; the encoder registry's MiniLM uses
    # max length 256, so do we unless told otherwise (targets are embedded that way).
    embed_max_length = int(options.get("embed_max_length", 256))
    embed_batch = int(options.get("embed_batch_size", 64))
    t0 = time.perf_counter()
    X_base = finetune.embed(model, tokenizer, texts, batch_size=embed_batch, max_length=embed_max_length,
                            progress=_phase_progress(progress, pos, _PHASES["embed_base"]))
    pos += _PHASES["embed_base"]
    X_ft = finetune.embed(result.encoder, tokenizer, texts, batch_size=embed_batch, max_length=embed_max_length,
                          progress=_phase_progress(progress, pos, _PHASES["embed_ft"]))
    pos += _PHASES["embed_ft"]
    mark("embed", t0)
    train_info = {
        "final_loss": float(result.epoch_losses[-1]),
        "first_loss": float(result.losses[0]) if result.losses else None,
        "n_trainable": int(result.n_trainable),
    }
    # the fine-tuned encoder is not kept: that is the point of an ESM
    del result
    del model
    gc.collect()

    t0 = time.perf_counter()
    esm = EmbeddingSpaceMap(metadata={"base_encoder": request.base_encoder})
    if request.map_fit == "lstsq":
        esm.fit(X_base, X_ft, method="lstsq",
                weight_decay=float(options.get("esm_weight_decay", ESM_FIT_DEFAULTS["esm_weight_decay"])))
    else:
        esm.fit(
            X_base, X_ft, method="adam",
            lr=float(options.get("esm_lr", ESM_FIT_DEFAULTS["esm_lr"])),
            epochs=int(options.get("esm_epochs", ESM_FIT_DEFAULTS["esm_epochs"])),
            batch_size=int(options.get("esm_batch_size", ESM_FIT_DEFAULTS["esm_batch_size"])),
            weight_decay=float(options.get("esm_weight_decay", ESM_FIT_DEFAULTS["esm_weight_decay"])),
            seed=request.seed,
        )
    fit_quality = esm.score_fit(X_base, X_ft)
    mark("fit_map", t0)
    if progress:
        progress(1.0)
    seconds["total"] = round(time.perf_counter() - t_start, 3)

    shift = float(np.mean(np.einsum("ij,ij->i", X_base, X_ft)))
    # flat scalars only: the service stores them as they are
    metrics = {
        "n_examples": len(texts),
        "n_classes": int(len(np.unique(labels))),
        "dim": int(X_base.shape[1]),
        "base_encoder": request.base_encoder,
        "train_layers": request.train_layers,
        "epochs": request.epochs,
        "max_length": request.max_length,
        "embed_max_length": embed_max_length,
        "n_trainable": train_info["n_trainable"],
        "train_loss_first": train_info["first_loss"],
        "train_loss_final": train_info["final_loss"],
        "map_fit": request.map_fit,
        **{f"map_{k}": float(v) for k, v in fit_quality.items()},
        # how far fine-tuning moved the embeddings (near 1: little was learnt)
        "mean_cosine_base_vs_finetuned": shift,
        "weight_layout": "fine_tuned ~= base @ weight.T + bias",
        **{f"seconds_{k}": v for k, v in seconds.items()},
    }
    return EsmTrainResult(
        weight=np.ascontiguousarray(esm.weight, dtype=np.float32),
        bias=np.ascontiguousarray(esm.bias, dtype=np.float32),
        base_embeddings=np.ascontiguousarray(X_base, dtype=np.float32),
        metrics=metrics,
    )
