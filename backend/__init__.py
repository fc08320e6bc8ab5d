"""Kimi Linear in-process: model, weights, tokenizer and chat format, engine, HTTP backends."""

from backend.weights import load_model

__all__ = ["load_model"]
