"""Kimi Linear in-process: model, weights, tokenizer and chat format, engine, HTTP backends."""

from backend.engine import Engine
from backend.sampling import Completion, SamplingParams
from backend.session import Session
from backend.weights import load_model

__all__ = ["Completion", "Engine", "SamplingParams", "Session", "load_model"]
