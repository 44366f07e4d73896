"""Small real models and image data made locally for the bring-your-own tests (no hub, no mocks)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from conftest import FILLER, WORDS


def save_tiny_bert(path: Path, *, num_labels: int | None = None, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT with a word-level vocabulary, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws}
                                                                     | set(FILLER))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels or 2)
    model = BertForSequenceClassification(cfg) if num_labels else BertModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_vit(path: Path, *, num_labels: int | None = None, seed: int = 0) -> Path:
    """A randomly initialised 2-layer ViT on 16x16 images, with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, num_labels=num_labels or 2)
    model = ViTForImageClassification(cfg) if num_labels else ViTModel(cfg)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_images(n: int, n_classes: int = 3, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Coloured noise whose mean colour depends on the class (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [200, 200, 40]])
    ims, labels = [], []
    for i in range(n):
        c = i % n_classes
        im = np.clip(colours[c] + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        ims.append(im)
        labels.append(c)
    return ims, labels


def imagefolder_zip(images, labels, names=None, top: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (im, y) in enumerate(zip(images, labels)):
            cls = names[y] if names else f"class{y}"
            arc = f"{cls}/img{i:04d}.png"
            z.writestr(f"{top}/{arc}" if top else arc, png_bytes(im))
    return buf.getvalue()


FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def fashion_mnist(n: int | None = None):
    """(uint8 (n, 28, 28), int labels) from the Debian package's files, or None when absent."""
    import gzip
    import os

    dirs = [Path(os.environ.get("TRANSFERRANK_FMNIST_DIR", "/nonexistent")), Path("/usr/share/datasets/fashion-mnist"),
            Path.home() / ".cache/transferrank/fashion-mnist/usr/share/datasets/fashion-mnist"]
    for d in dirs:
        if all((d / f).is_file() for f in FMNIST_FILES):
            with gzip.open(d / FMNIST_FILES[0]) as fh:
                x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
            with gzip.open(d / FMNIST_FILES[1]) as fh:
                y = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
            return (x[:n], y[:n]) if n else (x, y)
    return None
