"""Tokenizers: Kimi's tiktoken files in the official format, the byte-level test tokenizer, the embedding guard."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kimi_swarm.backend.model.tokenizer import (
    SPECIAL_TOKENS,
    ByteTokenizer,
    KimiTokenizer,
    StreamDecoder,
    Tokenizer,
    TokenizerError,
    _bounded_pieces,
    load_tokenizer,
)

KIMI_BASE = 163584
MERGES = [b"he", b"ll", b"hell", b"hello", b"\xe6\x96", b"\xe6\x96\x87", b"\xe6\x96\x87E", b"En", b"Eng"]


def write_tiktoken_model(directory: Path, tokens: list[bytes]) -> None:
    """tiktoken.model as shipped: one 'base64(token) rank' line per token."""
    lines = (f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(tokens))
    (directory / "tiktoken.model").write_text("".join(lines))


def write_kimi_config(directory: Path, base: int) -> None:
    """tokenizer_config.json like the release's: Kimi's specials at the same offsets from the base ranks."""
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    decoder = {str(base + id - KIMI_BASE): {"content": name, **entry} for name, id in SPECIAL_TOKENS.items()}
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "tokenizer_class": "TikTokenTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def small_kimi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("small_kimi")
    write_tiktoken_model(directory, [bytes((b,)) for b in range(256)] + MERGES)
    write_kimi_config(directory, 256 + len(MERGES))
    return directory


@pytest.fixture(scope="module")
def full_size_kimi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """163,584 base ranks, as in the release, so the specials land on their real ids."""
    directory = tmp_path_factory.mktemp("full_kimi")
    filler = [i.to_bytes(3, "big") for i in range(KIMI_BASE - 256)]
    write_tiktoken_model(directory, [bytes((b,)) for b in range(256)] + filler)
    write_kimi_config(directory, KIMI_BASE)
    return directory


def test_kimi_encode_uses_merges_and_the_han_aware_pattern(small_kimi_dir: Path) -> None:
    tok = KimiTokenizer.from_dir(small_kimi_dir)
    rank = {token: 256 + i for i, token in enumerate(MERGES)}
    assert tok.encode("hello hello") == [rank[b"hello"], 32, rank[b"hello"]]
    # "文E" is a merge, but Kimi's pattern puts a Han run in its own piece, so it must never be used.
    assert tok.encode("文Eng") == [rank[b"\xe6\x96\x87"], rank[b"Eng"]]
    assert tok.encode("12345") == [ord(c) for c in "12345"]


def test_kimi_round_trips_unicode_and_specials(small_kimi_dir: Path) -> None:
    tok = KimiTokenizer.from_dir(small_kimi_dir)
    base = 256 + len(MERGES)
    text = "<|im_user|>user<|im_middle|>héllo 文English 🎉 e\u0301<|im_end|>[EOS]"
    ids = tok.encode(text)
    assert ids[:1] == [base + 3] and ids[-2:] == [base + 2, base + 1]
    assert tok.decode(ids) == text
    assert tok.token_bytes(base + 2) == b"<|im_end|>"
    assert tok.token_bytes(256 + MERGES.index(b"hello")) == b"hello"
    assert tok.special_ids["<|tool_call_begin|>"] == base + 13
    assert tok.eos_token_ids == [base + 2, base + 1]
    assert tok.vocab_size == base + 258
    assert isinstance(tok, Tokenizer)


def test_long_runs_are_cut_where_tokenization_kimi_cuts_them() -> None:
    text = "x" * 60_000 + " " * 30_000 + "tail"
    pieces = list(_bounded_pieces(text))
    assert "".join(pieces) == text
    assert [len(p) for p in pieces] == [25_000, 25_000, 10_000 + 25_000, 5_000 + 4]
    huge = "ab " * 150_000
    assert [len(p) for p in _bounded_pieces(huge)] == [400_000, 50_000]


def test_kimi_encodes_long_inputs(small_kimi_dir: Path) -> None:
    tok = KimiTokenizer.from_dir(small_kimi_dir)
    text = "hello" * 12_000 + " " * 30_000 + "文" * 100
    assert tok.decode(tok.encode(text)) == text


def test_real_ids_and_the_163840_163841_guard(full_size_kimi_dir: Path) -> None:
    unguarded = load_tokenizer(full_size_kimi_dir)
    assert isinstance(unguarded, KimiTokenizer)
    assert unguarded.vocab_size == 163_842
    assert unguarded.encode("<|reserved_token_163841|>") == [163_841]  # the hazard the guard removes

    tok = load_tokenizer(full_size_kimi_dir, embedding_rows=163_840)
    assert tok.vocab_size == 163_840
    for name, id in SPECIAL_TOKENS.items():
        assert tok.special_ids[name] == id
        assert tok.encode(name) == [id]
    assert tok.eos_token_ids == [163_586, 163_585]
    assert tok.encode("[UNK][PAD]") == [163_838, 163_839]
    reserved = "<|reserved_token_163840|><|reserved_token_163841|>"
    ids = tok.encode(reserved)
    assert max(ids) < 256 and tok.decode(ids) == reserved
    for bad in (163_840, 163_841):
        with pytest.raises(TokenizerError, match=str(bad)):
            tok.decode([1, bad])
        with pytest.raises(TokenizerError, match=str(bad)):
            tok.token_bytes(bad)


def test_guard_refuses_a_model_too_small_for_the_chat_specials(full_size_kimi_dir: Path) -> None:
    with pytest.raises(TokenizerError, match=r"<\|im_middle\|>.*163601.*163600 embedding rows"):
        load_tokenizer(full_size_kimi_dir, embedding_rows=163_600)
    with pytest.raises(TokenizerError, match="163584 ordinary tokens.*only 1000 rows"):
        load_tokenizer(full_size_kimi_dir, embedding_rows=1000)


def test_kimi_files_with_problems_are_named(tmp_path: Path) -> None:
    (tmp_path / "tiktoken.model").write_text("aGk= 0\nnot-a-line\n")
    write_kimi_config(tmp_path, 1)
    with pytest.raises(TokenizerError, match=r"tiktoken.model:2: expected 'BASE64TOKEN RANK'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer_config.json is missing"):
        KimiTokenizer.from_dir(tmp_path)
    (tmp_path / "tiktoken.model").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        load_tokenizer(tmp_path)


def test_byte_tokenizer_layout_save_and_load(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    assert [tok.special_ids[name] for name in SPECIAL_TOKENS] == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert tok.vocab_size == 256 + len(SPECIAL_TOKENS)
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path, embedding_rows=300)
    assert isinstance(loaded, ByteTokenizer) and loaded.special_ids == tok.special_ids
    text = "<|im_assistant|>assistant<|im_middle|>ça 文 🎉<|tool_call_end|><|im_end|>"
    ids = loaded.encode(text)
    assert ids[0] == tok.special_ids["<|im_assistant|>"] and ids[-1] == tok.special_ids["<|im_end|>"]
    assert ids[1:10] == list(b"assistant")
    assert loaded.decode(ids) == text
    assert loaded.decode([0xE6, 0x96]) == "\ufffd"
    assert loaded.eos_token_ids == [tok.special_ids["<|im_end|>"], tok.special_ids["[EOS]"]]


def test_byte_tokenizer_guard(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path)
    trimmed = load_tokenizer(tmp_path, embedding_rows=271)  # [UNK]=271 and [PAD]=272 fall outside
    assert trimmed.vocab_size == 271 and "[PAD]" not in trimmed.special_ids
    assert trimmed.encode("[PAD]") == list(b"[PAD]")
    with pytest.raises(TokenizerError, match="outside"):
        trimmed.decode([272])
    with pytest.raises(TokenizerError, match=r"<\|im_middle\|>"):
        load_tokenizer(tmp_path, embedding_rows=265)


def test_stream_decoder_holds_back_split_characters(small_kimi_dir: Path) -> None:
    tok = ByteTokenizer()
    text = "a é 文 🎉!"
    decoder = StreamDecoder(tok)
    deltas = [decoder.push(id) for id in tok.encode(text)]
    assert "".join(deltas) + decoder.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    emoji_at = len("a é 文 ".encode())
    assert deltas[emoji_at : emoji_at + 4] == ["", "", "", "🎉"]

    kimi = KimiTokenizer.from_dir(small_kimi_dir)
    partial = 256 + MERGES.index(b"\xe6\x96")  # the first two bytes of 文 as one token
    decoder = StreamDecoder(kimi)
    assert decoder.push(partial) == ""
    assert decoder.push(0x87) == "文"
    assert decoder.push(partial) == ""
    assert decoder.flush() == "\ufffd"
