"""Kimi Linear in-process: the model and its weights, the engine that forks sessions, and chat backends.

Layers, each importing only those before it: `model` (config, KDA / MLA / MoE layers, safetensors loader,
tokenizer), `engine` (state slots and paged latent cache, sessions, fork, scheduler), `chat` (messages, the
Kimi chat format, and the `ChatBackend`s the swarm talks to: the engine, OpenAI-compatible servers, replays).
"""

from .chat.conversation import ChatBackend, Conversation, ConversationClosedError, FinishReason, Reply, ReplyOptions
from .chat.engine_backend import EngineBackend
from .chat.messages import Message, ToolCall, ToolSpec
from .chat.openai_backend import BackendError, OpenAIBackend
from .chat.replay import RecordingBackend, ReplayBackend, ReplayMismatch
from .engine.devices import ENGINE_DTYPES
from .engine.engine import Engine
from .engine.errors import CacheCapacityError, EngineCrashedError, SessionBusyError, SessionClosedError
from .engine.sampling import Completion, SamplingParams
from .engine.session import Session
from .model.config import ConfigError, KimiLinearConfig
from .model.default_model import DefaultModelMissing, default_model_path
from .model.fp8 import QUANTIZATIONS
from .model.model import KimiLinearForCausalLM
from .model.tokenizer import TokenizerError, load_tokenizer
from .model.weights import WeightLoadError, load_model

__all__ = [
    "ENGINE_DTYPES",
    "BackendError",
    "CacheCapacityError",
    "ChatBackend",
    "Completion",
    "ConfigError",
    "Conversation",
    "ConversationClosedError",
    "DefaultModelMissing",
    "Engine",
    "EngineBackend",
    "EngineCrashedError",
    "FinishReason",
    "KimiLinearConfig",
    "KimiLinearForCausalLM",
    "Message",
    "QUANTIZATIONS",
    "OpenAIBackend",
    "RecordingBackend",
    "ReplayBackend",
    "ReplayMismatch",
    "Reply",
    "ReplyOptions",
    "SamplingParams",
    "Session",
    "SessionBusyError",
    "SessionClosedError",
    "TokenizerError",
    "ToolCall",
    "ToolSpec",
    "WeightLoadError",
    "default_model_path",
    "load_model",
    "load_tokenizer",
]
