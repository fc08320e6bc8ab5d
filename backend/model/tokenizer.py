"""Tokenizers for the in-process engine: Kimi's tiktoken BPE and a byte-level stand-in for tiny test models.

Both put Kimi's special tokens (`<|im_end|>`, the tool-call markers, ...) into the id space and encode
their literal text as the special id, because the chat format is rendered as text and then encoded.
`load_tokenizer` picks the right one for a checkpoint directory and, given the model's embedding size,
guarantees that no id the tokenizer produces falls outside the embedding: Kimi's release code reserves
256 + 2 special ids, so ids 163840 and 163841 exist in the tokenizer but not in the 163840-row model.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import tiktoken

SPECIAL_TOKENS: dict[str, int] = {
    "[BOS]": 163584,
    "[EOS]": 163585,
    "<|im_end|>": 163586,
    "<|im_user|>": 163587,
    "<|im_assistant|>": 163588,
    "<|start_header_id|>": 163590,
    "<|end_header_id|>": 163591,
    "[EOT]": 163593,
    "<|im_system|>": 163594,
    "<|tool_calls_section_begin|>": 163595,
    "<|tool_calls_section_end|>": 163596,
    "<|tool_call_begin|>": 163597,
    "<|tool_call_argument_begin|>": 163598,
    "<|tool_call_end|>": 163599,
    "<|im_middle|>": 163601,
    "[UNK]": 163838,
    "[PAD]": 163839,
}
"""Kimi K2 / Kimi Linear special token ids (tokenizer_config.json of the release)."""

REQUIRED_SPECIALS: tuple[str, ...] = (
    "<|im_end|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_system|>",
    "<|im_middle|>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
"""The specials the chat format cannot work without; a tokenizer lacking one is refused at load time."""

KIMI_PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
"""Kimi's Han-aware pre-tokenizer pattern, verbatim from the release's tokenization_kimi.py."""

KIMI_RESERVED_SPECIALS = 256 + 2
"""tokenization_kimi.py reserves this many ids after the base ranks (hence ids up to 163841)."""

TIKTOKEN_MAX_ENCODE_CHARS = 400_000
"""tiktoken panics on longer inputs, so text is encoded in pieces of at most this many characters."""

MAX_RUN_CHARS = 25_000
"""Longest run of whitespace or non-whitespace handed to tiktoken at once (tiktoken issue 195)."""

BYTE_LEVEL_MARKER = "kimi-swarm byte-level"
"""Value of `tokenizer_type` in a tokenizer_config.json written by `ByteTokenizer.save`."""


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or an id it cannot handle."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    vocab_size: int
    special_ids: dict[str, int]
    eos_token_ids: list[int]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their special ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        ...

    def token_bytes(self, id: int) -> bytes:
        """Raw bytes of one token (a special gives its text)."""
        ...


def _special_splitter(specials: dict[str, int]) -> re.Pattern[str]:
    """A regex whose capturing split separates special-token strings from ordinary text."""
    names = sorted(specials, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(name) for name in names) + ")")


def _split_specials(text: str, splitter: re.Pattern[str], specials: dict[str, int]) -> Iterator[str | int]:
    """Ordinary text pieces and special ids, in order."""
    for index, piece in enumerate(splitter.split(text)):
        if index % 2:
            yield specials[piece]
        elif piece:
            yield piece


def _bounded_pieces(text: str) -> Iterator[str]:
    """Cut `text` so tiktoken never sees more than 400k chars or a 25k-char whitespace/non-whitespace run.

    The cut rule of tokenization_kimi.py (every 400k chars, then every 25k chars into a long run), applied to
    each stretch of text between special tokens so that a cut can never split a special-token string.
    """
    for start in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
        piece = text[start : start + TIKTOKEN_MAX_ENCODE_CHARS]
        cuts = [
            cut
            for run in re.finditer(rf"\s{{{MAX_RUN_CHARS + 1},}}|\S{{{MAX_RUN_CHARS + 1},}}", piece)
            for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS)
        ]
        bounds = [0, *cuts, len(piece)]
        yield from (piece[a:b] for a, b in zip(bounds, bounds[1:]))


def _fit_specials(
    specials: dict[str, int], base_size: int, total_size: int, embedding_rows: int | None, where: Path | str
) -> tuple[dict[str, int], int]:
    """The specials and vocab size left once ids >= embedding_rows are removed; refuses unusable layouts."""
    missing = [name for name in REQUIRED_SPECIALS if name not in specials]
    if missing:
        raise TokenizerError(f"tokenizer in {where} lacks the chat-format special tokens {missing}")
    if embedding_rows is None:
        return dict(specials), total_size
    if base_size > embedding_rows:
        raise TokenizerError(
            f"tokenizer in {where} has {base_size} ordinary tokens but the model's embedding has only "
            f"{embedding_rows} rows; they do not belong together"
        )
    outside = {name: specials[name] for name in REQUIRED_SPECIALS if specials[name] >= embedding_rows}
    if outside:
        raise TokenizerError(
            f"tokenizer in {where}: special tokens {outside} have ids >= the model's {embedding_rows} "
            "embedding rows, so the chat format cannot be used with this model"
        )
    kept = {name: id for name, id in specials.items() if id < embedding_rows}
    return kept, min(total_size, embedding_rows)


class _SpecialAware:
    """Shared behaviour: special-token bookkeeping, id checks and end-of-turn ids."""

    vocab_size: int
    special_ids: dict[str, int]
    eos_token_ids: list[int]

    def _init_specials(self, specials: dict[str, int], vocab_size: int, eos_token: str) -> None:
        self.special_ids = specials
        self.vocab_size = vocab_size
        self.eos_token_ids = list(dict.fromkeys(specials[n] for n in ("<|im_end|>", eos_token) if n in specials))
        self._special_by_id = {id: name for name, id in specials.items()}
        self._splitter = _special_splitter(specials)

    def _check_ids(self, ids: Sequence[int]) -> None:
        if len(ids) and not (0 <= min(ids) and max(ids) < self.vocab_size):
            bad = next(id for id in ids if not 0 <= id < self.vocab_size)
            raise TokenizerError(f"token id {bad} is outside this tokenizer's ids 0..{self.vocab_size - 1}")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pieces(text):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids.extend(self._encode_plain(piece))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of text that holds no special token."""
        raise NotImplementedError

    def _pieces(self, text: str) -> Iterator[str | int]:
        return _split_specials(text, self._splitter, self.special_ids)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path} is missing") from None
    except json.JSONDecodeError as error:
        raise TokenizerError(f"{path} is not valid JSON: {error}") from None


def _added_tokens(config: dict, path: Path) -> dict[int, str]:
    decoder = config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        raise TokenizerError(f"{path} has no added_tokens_decoder mapping ids to special tokens")
    try:
        return {int(id): entry["content"] for id, entry in decoder.items()}
    except (ValueError, KeyError, TypeError) as error:
        raise TokenizerError(f"{path}: malformed added_tokens_decoder entry ({error!r})") from None


def _token_text(token: object) -> str | None:
    """A tokenizer_config token field, written either as a string or as an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken.model file (base64 token, space, rank per line) without tiktoken's download cache."""
    ranks: dict[bytes, int] = {}
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise TokenizerError(f"{path}:{number}: expected 'BASE64TOKEN RANK', got {line[:80]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not the distinct numbers 0..{len(ranks) - 1}")
    return ranks


class KimiTokenizer(_SpecialAware):
    """Kimi's tiktoken BPE (tokenization_kimi.py) with its special tokens, loaded from local files only."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        added_tokens: dict[int, str],
        *,
        eos_token: str = "[EOS]",
        embedding_rows: int | None = None,
        where: Path | str = "<memory>",
    ) -> None:
        base = len(ranks)
        specials = {
            added_tokens.get(id, f"<|reserved_token_{id}|>"): id for id in range(base, base + KIMI_RESERVED_SPECIALS)
        }
        kept, vocab_size = _fit_specials(specials, base, base + KIMI_RESERVED_SPECIALS, embedding_rows, where)
        self._encoding = tiktoken.Encoding(
            name="kimi", pat_str=KIMI_PAT_STR, mergeable_ranks=ranks, special_tokens=specials
        )
        self._init_specials(kept, vocab_size, eos_token)

    @classmethod
    def from_dir(cls, path: str | Path, embedding_rows: int | None = None) -> KimiTokenizer:
        """Load `tiktoken.model` and `tokenizer_config.json` from a checkpoint directory."""
        directory = Path(path)
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path)
        model_path = directory / "tiktoken.model"
        if not model_path.is_file():
            raise TokenizerError(f"{model_path} is missing")
        return cls(
            read_tiktoken_ranks(model_path),
            _added_tokens(config, config_path),
            eos_token=_token_text(config.get("eos_token")) or "[EOS]",
            embedding_rows=embedding_rows,
            where=directory,
        )

    def _encode_plain(self, text: str) -> list[int]:
        return [id for chunk in _bounded_pieces(text) for id in self._encoding.encode_ordinary(chunk)]

    def decode(self, ids: Sequence[int]) -> str:
        self._check_ids(ids)
        return self._encoding.decode(list(ids))

    def token_bytes(self, id: int) -> bytes:
        self._check_ids((id,))
        return self._encoding.decode_single_token_bytes(id)


BYTE_SPECIAL_ORDER: tuple[str, ...] = tuple(SPECIAL_TOKENS)
"""Byte-level special ids are 256 + position in this (Kimi id) order."""


class ByteTokenizer(_SpecialAware):
    """UTF-8 bytes as ids 0..255, then Kimi's specials from 256 on: a tokenizer for tiny test checkpoints."""

    def __init__(self, specials: dict[str, int] | None = None, *, embedding_rows: int | None = None,
                 where: Path | str = "<memory>") -> None:
        specials = dict(specials) if specials else {name: 256 + i for i, name in enumerate(BYTE_SPECIAL_ORDER)}
        if any(id < 256 for id in specials.values()) or len(set(specials.values())) != len(specials):
            raise TokenizerError(f"byte-level specials in {where} must have distinct ids >= 256, got {specials}")
        kept, vocab_size = _fit_specials(specials, 256, max(specials.values()) + 1, embedding_rows, where)
        self._init_specials(kept, vocab_size, "[EOS]")

    @classmethod
    def from_dir(cls, path: str | Path, embedding_rows: int | None = None) -> ByteTokenizer:
        """Read back what `save` wrote."""
        config_path = Path(path) / "tokenizer_config.json"
        config = _read_json(config_path)
        if config.get("tokenizer_type") != BYTE_LEVEL_MARKER:
            raise TokenizerError(f"{config_path} does not describe a byte-level tokenizer")
        added = _added_tokens(config, config_path)
        return cls({name: id for id, name in added.items()}, embedding_rows=embedding_rows, where=path)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer_config.json into a (test checkpoint) directory so `load_tokenizer` finds it."""
        config_path = Path(path) / "tokenizer_config.json"
        config = {
            "tokenizer_type": BYTE_LEVEL_MARKER,
            "bos_token": "[BOS]",
            "eos_token": "[EOS]",
            "added_tokens_decoder": {
                str(id): {"content": name, "special": True}
                for name, id in sorted(self.special_ids.items(), key=lambda item: item[1])
            },
        }
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return config_path

    def _encode_plain(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(id) for id in ids).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        self._check_ids((id,))
        if id < 256:
            return bytes((id,))
        name = self._special_by_id.get(id)
        if name is None:
            raise TokenizerError(f"token id {id} is not assigned in this byte-level tokenizer")
        return name.encode("utf-8")


def load_tokenizer(path: str | Path, embedding_rows: int | None = None) -> Tokenizer:
    """The tokenizer stored in a checkpoint directory; with `embedding_rows`, one that never emits ids beyond it."""
    directory = Path(path)
    if (directory / "tiktoken.model").is_file():
        return KimiTokenizer.from_dir(directory, embedding_rows)
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file() and _read_json(config_path).get("tokenizer_type") == BYTE_LEVEL_MARKER:
        return ByteTokenizer.from_dir(directory, embedding_rows)
    raise TokenizerError(
        f"no tokenizer in {directory}: expected tiktoken.model + tokenizer_config.json (Kimi) "
        "or a tokenizer_config.json written by ByteTokenizer.save"
    )


class StreamDecoder:
    """Turns generated ids into text deltas, holding back a UTF-8 character split across tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        """The text completed by token `id` (possibly empty)."""
        return self._utf8.decode(self._tokenizer.token_bytes(id))

    def flush(self) -> str:
        """Whatever is still held back, with an incomplete character as U+FFFD."""
        return self._utf8.decode(b"", final=True)
