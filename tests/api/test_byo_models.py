"""Bring-your-own model candidates, end to end over the API with real (tiny, locally saved) models:
a randomly initialised BERT and ViT registered with POST /v1/models, text and image targets
uploaded, rankings that include them; heads give LEEP; bad models fail with the loader's reason."""
from __future__ import annotations

import numpy as np
import pytest
from byo_helpers import imagefolder_zip, save_tiny_bert, save_tiny_vit, synthetic_images

from conftest import csv_bytes, make_texts, rank, upload, wait_job


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"bert": save_tiny_bert(root / "bert"), "bert_head": save_tiny_bert(root / "bert-head", num_labels=4),
            "vit": save_tiny_vit(root / "vit"), "vit_head": save_tiny_vit(root / "vit-head", num_labels=5)}


def _add(client, **body):
    r = client.post("/v1/models", json=body)
    if r.status_code == 202:
        job = wait_job(client, r.json()["job"])
        assert job["status"] == "done", job
        return client.get(f"/v1/models/{body['name']}").json()
    assert r.status_code == 201, r.text
    return r.json()


def test_register_text_and_vision_models_and_rank(client, tiny_models):
    bert = _add(client, name="tiny-bert", path=str(tiny_models["bert"]), pooling="cls", licence="Apache-2.0")
    assert bert["kind"] == "transformers" and bert["modality"] == "text" and bert["dim"] == 32
    assert bert["params"] > 1000 and bert["licence"] == "Apache-2.0" and bert["status"] == "ready"
    assert "bert" in bert["family"]
    head = _add(client, name="tiny-bert-head", path=str(tiny_models["bert_head"]))
    assert head["n_source_classes"] == 4 and head["has_head"]
    vit = _add(client, name="tiny-vit", path=str(tiny_models["vit"]))
    assert vit["modality"] == "image" and vit["dim"] == 32
    names = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"tiny-bert", "tiny-vit", "glove-6b-50d"} <= set(names)
    assert names["glove-6b-50d"]["origin"] == "builtin"
    assert {m["name"] for m in client.get("/v1/models?modality=image").json()["models"]} == {"tiny-vit"}

    texts, labels = make_texts(48, 3)
    ds = upload(client, csv_bytes(texts, labels), "t.csv").json()
    assert ds["modality"] == "text" and ds["task_type"] == "classification"
    out = rank(client, {"target": ds["id"], "candidates": "models",
                        "sources": ["tiny-bert", "tiny-bert-head", "glove-6b-50d"]})
    got = {r["source"]: r for r in out["ranking"]}
    assert set(got) == {"tiny-bert", "tiny-bert-head", "glove-6b-50d"}
    assert all(np.isfinite(r["scores"]["logme"]) for r in got.values())
    # a head's source-class probabilities: LEEP / NCE score it; models without one are skipped
    out = rank(client, {"target": ds["id"], "candidates": "models", "estimators": ["leep", "logme"],
                        "sources": ["tiny-bert-head", "tiny-bert"]})
    got = {r["source"]: r for r in out["ranking"]}
    assert np.isfinite(got["tiny-bert-head"]["scores"]["leep"])
    assert got["tiny-bert"]["scores"]["leep"] is None
    assert "probabilities" in got["tiny-bert"]["details"]["leep"]["skipped"]
    # an image model is not a candidate for a text target
    r = client.post("/v1/rankings", json={"target": ds["id"], "candidates": "models", "sources": ["tiny-vit"]})
    assert r.status_code == 422 and "tiny-vit" in r.json()["detail"]

    ims, ylab = synthetic_images(30, 3)
    img = upload(client, imagefolder_zip(ims, ylab), "pics.zip").json()
    assert img["modality"] == "image" and img["kind"] == "image" and img["n_examples"] == 30 and img["n_classes"] == 3
    _add(client, name="tiny-vit-head", path=str(tiny_models["vit_head"]))
    out = rank(client, {"target": img["id"], "candidates": "models"})
    got = {r["source"]: r for r in out["ranking"]}
    assert set(got) == {"tiny-vit", "tiny-vit-head"}  # only the vision candidates
    assert all(np.isfinite(r["scores"]["logme"]) for r in got.values())
    assert out["target"]["modality"] == "image"


def test_slow_load_answers_202_with_the_job(client, tiny_models):
    r = client.post("/v1/models", json={"name": "later", "path": str(tiny_models["bert"]), "wait": 0})
    assert r.status_code in (201, 202), r.text
    body = r.json()
    assert body["name"] == "later" and body["kind"] == "transformers" and body["job"]
    if r.status_code == 202:
        assert body["status"] == "loading"
        assert wait_job(client, body["job"])["status"] == "done"
    got = client.get("/v1/models/later").json()
    assert got["status"] == "ready" and got["dim"] == 32
    spec = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/models/{name}", "/v1/sources/import", "/v1/sources/{name}/esm",
            "/v1/sources/bulk"} <= set(spec)


def test_model_lifecycle_and_errors(client, tiny_models, tmp_path):
    r = client.post("/v1/models", json={"name": "nope", "path": str(tmp_path / "missing")})
    assert r.status_code == 422 and "no file or directory" in r.json()["detail"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    r = client.post("/v1/models", json={"name": "broken", "path": str(broken), "modality": "text"})
    assert r.status_code == 422 and "could not be loaded" in r.json()["detail"], r.text
    assert client.get("/v1/models/broken").status_code == 404  # nothing half-registered
    r = client.post("/v1/models", json={"name": "bad name!", "path": str(tiny_models["bert"])})
    assert r.status_code == 422
    _add(client, name="b1", path=str(tiny_models["bert"]))
    assert client.post("/v1/models", json={"name": "b1", "path": str(tiny_models["bert"])}).status_code == 409
    assert client.patch("/v1/models/b1", json={"enabled": False}).json()["enabled"] is False
    texts, labels = make_texts(30, 3)
    ds = upload(client, csv_bytes(texts, labels), "t.csv").json()
    r = client.post("/v1/rankings", json={"target": ds["id"], "candidates": "models", "sources": ["b1"]})
    assert r.status_code == 422  # disabled
    client.patch("/v1/models/b1", json={"enabled": True})
    rank(client, {"target": ds["id"], "candidates": "models", "sources": ["b1"]})
    assert client.delete("/v1/models/glove-6b-50d").status_code == 409
    d = client.delete("/v1/models/b1").json()
    assert d["deleted"] and d["feature_sets_removed"] == 1 and d["scores_removed"] >= 1
    assert client.get("/v1/models/b1").status_code == 404


def test_image_upload_limits(client):
    import io
    import zipfile

    ims, ylab = synthetic_images(6, 2)
    assert upload(client, imagefolder_zip(ims, ylab, top="root"), "x.zip").status_code == 201
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/ok.png", b"not a png")
        z.writestr("b/ok.png", b"\x89PNG junk")
    r = upload(client, buf.getvalue(), "bad.zip")
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("flat.png", b"x")
    r = upload(client, buf.getvalue(), "flat.zip")
    assert r.status_code == 422 and "ImageFolder" in r.json()["detail"]
    # a decompression bomb: a tiny PNG that declares a huge canvas
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (6000, 6000)).save(big, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/bomb.png", big.getvalue())
        z.writestr("b/fine.png", big.getvalue())
    r = upload(client, buf.getvalue(), "bomb.zip")
    assert r.status_code == 422 and "decompression bomb" in r.json()["detail"], r.text


def test_sentence_transformers_dir_and_pooling_options(client, tiny_models, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    from app.encoders.base import EncoderSpec
    from app.encoders.custom import build

    st_dir = tmp_path / "st"
    word = models.Transformer(str(tiny_models["bert"]))
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")]).save(str(st_dir))
    st = _add(client, name="tiny-st", path=str(st_dir), licence="Apache-2.0")
    assert st["kind"] == "sentence-transformers" and st["modality"] == "text" and st["dim"] == 32
    texts, labels = make_texts(30, 3)
    ds = upload(client, csv_bytes(texts, labels), "t.csv").json()
    out = rank(client, {"target": ds["id"], "candidates": "models", "sources": ["tiny-st"]})
    assert np.isfinite(out["ranking"][0]["scores"]["logme"])

    # sentence-transformers' mean pooling == our mean pooling of the same weights
    spec = lambda **o: EncoderSpec(name="x", kind="transformers", path=str(tiny_models["bert"]),  # noqa: E731
                                   options={"custom": True, **o})
    mean = build(spec(pooling="mean")).encode(texts[:6])
    ref = SentenceTransformer(str(st_dir), device="cpu").encode(texts[:6])
    np.testing.assert_allclose(mean, ref, rtol=1e-4, atol=1e-5)
    cls = build(spec(pooling="cls")).encode(texts[:6])
    emb = build(spec(pooling="mean", layer=0)).encode(texts[:6])
    assert not np.allclose(cls, mean) and not np.allclose(emb, mean)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        build(spec(layer=7))
    r = client.post("/v1/models", json={"name": "p", "path": str(tiny_models["vit"]), "pooling": "cls"})
    assert r.status_code == 422 and "pooling applies to text models" in r.json()["detail"]


def test_cli_models_add_list_remove(tmp_path, tiny_models, capsys):
    import json

    from app.cli import main

    d = str(tmp_path / "data")
    assert main(["models", "add", str(tiny_models["vit"]), "--name", "v", "--data-dir", d]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["name"] == "v" and added["modality"] == "image" and added["status"] == "ready"
    assert main(["models", "list", "--data-dir", d]) == 0
    assert "v" in {m["name"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert main(["models", "add", str(tmp_path / "none"), "--name", "w", "--data-dir", d]) == 2
    assert "no file or directory" in capsys.readouterr().err
    assert main(["models", "remove", "v", "--data-dir", d]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] is True


def test_hub_id_from_the_local_cache_only(client, tiny_models, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-bert"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_models["bert"], snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    m = _add(client, name="acme", path="acme/tiny-bert")
    assert m["path"].endswith("0" * 40) and m["dim"] == 32
    r = client.post("/v1/models", json={"name": "other", "path": "acme/not-cached"})
    assert r.status_code == 422 and "nothing is downloaded" in r.json()["detail"]
