"""Image targets ranked by vision candidates: a TorchScript CNN trained here on Fashion-MNIST ranks
above a random-init one on a Fashion-MNIST target (Parquet upload); the shipped demo image models
are seeded and rank an image target out of the box."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from byo_helpers import fashion_mnist, png_bytes

from conftest import rank, upload

fm = fashion_mnist()
needs_fmnist = pytest.mark.skipif(fm is None, reason="Fashion-MNIST not installed (apt-get install "
                                                     "dataset-fashion-mnist)")


def _parquet(images, labels) -> bytes:
    buf = io.BytesIO()
    pd.DataFrame({"image": [png_bytes(im) for im in images], "label": [int(v) for v in labels]}).to_parquet(buf)
    return buf.getvalue()


@needs_fmnist
def test_trained_cnn_ranks_above_random_init(client, tmp_path):
    import torch

    from app.demo.image_models import save_torchscript, small_cnn, train_cnn

    torch.set_num_threads(1)
    x, y = fm
    trained, _ = train_cnn(x[:3000], y[:3000], epochs=1, seed=0)
    torch.manual_seed(1)
    random_init = small_cnn(10).eval()
    classes = [str(i) for i in range(10)]
    p1 = save_torchscript(trained, tmp_path / "trained.pt", classes=classes, licence="MIT", family="SmallCNN")
    p2 = save_torchscript(random_init, tmp_path / "random.pt", classes=classes, licence="MIT", family="SmallCNN")
    for name, path in (("cnn-trained", p1), ("cnn-random", p2)):
        r = client.post("/v1/models", json={"name": name, "path": str(path)})
        assert r.status_code == 201, r.text
        m = r.json()
        assert m["kind"] == "torchscript" and m["modality"] == "image" and m["dim"] == 64
        assert m["n_source_classes"] == 10 and m["licence"] == "MIT"
    # target: held-out Fashion-MNIST images (not in the training slice), as Parquet image bytes + label
    xt, yt = x[50_000:50_300], y[50_000:50_300]
    ds = upload(client, _parquet(xt, yt), "fmnist.parquet").json()
    assert ds["modality"] == "image" and ds["n_examples"] == 300 and ds["n_classes"] == 10
    out = rank(client, {"target": ds["id"], "candidates": "models"})
    assert [r["source"] for r in out["ranking"]] == ["cnn-trained", "cnn-random"]
    assert "leep" not in out["estimators"]  # the default is the LOBO-chosen features set, heads or not
    top = out["ranking"][0]["scores"]
    low = out["ranking"][1]["scores"]
    assert top["logme"] > low["logme"]
    out = rank(client, {"target": ds["id"], "candidates": "models", "estimators": ["leep"]})
    assert [r["source"] for r in out["ranking"]] == ["cnn-trained", "cnn-random"]  # both carry a head


@needs_fmnist
def test_demo_image_models_rank_out_of_the_box(make_client):
    client = make_client(seed_demo=True)
    demo = {m["name"]: m for m in client.get("/v1/models?origin=demo").json()["models"]}
    assert {"fmnist-cnn", "fmnist-tops-cnn", "mnist-cnn"} <= set(demo)
    assert all(m["licence"] and m["modality"] == "image" for m in demo.values())
    x, y = fm
    ds = upload(client, _parquet(x[59_000:59_200], y[59_000:59_200]), "f.parquet").json()
    out = rank(client, {"target": ds["id"], "candidates": "models"})
    order = [r["source"] for r in out["ranking"]]
    assert set(order) == set(demo)
    assert order.index("fmnist-cnn") < order.index("mnist-cnn")  # trained on the target's own domain
