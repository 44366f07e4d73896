"""User models on Ray workers: the worker gets the model's spec (no process-wide registry), texts and
PIL images travel to the actor, and the features equal the local backend's."""
from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from byo_helpers import save_tiny_bert, synthetic_images  # noqa: E402

from app.encoders.base import EncoderSpec  # noqa: E402
from app.workers.local import LocalBackend  # noqa: E402
from app.workers.ray_backend import RayBackend  # noqa: E402
from conftest import make_texts  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_user_model_specs_run_on_ray_actors(tmp_path):
    from PIL import Image

    from app.services.models import DEMO_MODELS_DIR

    bert = save_tiny_bert(tmp_path / "bert", num_labels=3)
    text_spec = EncoderSpec(name="tiny-bert", kind="transformers", path=str(bert),
                            options={"custom": True, "modality": "text", "with_probs": True, "pooling": "cls"})
    img_spec = EncoderSpec(name="fmnist-cnn", kind="torchscript", path=str(DEMO_MODELS_DIR / "fmnist-cnn.pt"),
                           options={"custom": True, "modality": "image", "with_probs": True})
    texts, _ = make_texts(12, 3)
    images = [Image.fromarray(a) for a in synthetic_images(10, 2, size=28)[0]]
    local = LocalBackend(max_workers=1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             namespace="transferrank-byo-tests")
    backend = RayBackend(num_actors=1, poll_interval=0.1)
    try:
        for spec, items, dim in ((text_spec, texts, 32 + 3), (img_spec, images, 64 + 10)):
            remote = backend.submit_embed(spec, items).result(timeout=240)
            here = local.submit_embed(spec, items).result(timeout=240)
            assert remote.shape == (len(items), dim)
            np.testing.assert_allclose(remote, here, rtol=1e-5, atol=1e-6)
            probs = remote[:, -(dim - (32 if spec is text_spec else 64)):]
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    finally:
        backend.shutdown()
        ray.shutdown()
        local.shutdown()
