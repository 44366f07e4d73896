"""Encoders: texts -> float32 features. See ``app.encoders.registry`` for the catalogue."""
from app.encoders.base import Encoder, EncoderSpec, check_texts

__all__ = ["Encoder", "EncoderSpec", "check_texts"]
