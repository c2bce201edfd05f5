"""Tokenizers: bytes by default (no downloads); a Hugging Face tokenizer from a checkpoint dir."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from hymba_bench.errors import HymbaBenchError


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def check_vocab(model_vocab: int, tokenizer_vocab: int, where: str) -> None:
    """A model whose vocabulary is smaller than its tokenizer's would index past its embedding."""
    if model_vocab < tokenizer_vocab:
        raise HymbaBenchError(f"{where}: vocab_size: {model_vocab} is smaller than the "
                              f"tokenizer's {tokenizer_vocab} tokens (accuracy trains and "
                              f"evaluates through it): make it at least {tokenizer_vocab}")


class ByteTokenizer:
    """UTF-8 bytes 0..255, then BOS, EOS and PAD. Lossless for any text; needs no files."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` from a checkpoint directory, through the `tokenizers` package."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise HymbaBenchError(f"{path}: loading a Hugging Face tokenizer needs the "
                                  "'tokenizers' package (pip install tokenizers)") from None
        self._tok = _Tok.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        vocab = self._tok.get_vocab()
        self.bos_id = vocab.get("<s>", vocab.get("<|begin_of_text|>", 1))
        self.eos_id = vocab.get("</s>", vocab.get("<|end_of_text|>", 2))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def load_tokenizer(checkpoint: Path | None) -> Tokenizer:
    """The checkpoint's own tokenizer when it has one, else bytes."""
    if checkpoint is not None:
        candidate = Path(checkpoint) / "tokenizer.json"
        if candidate.is_file():
            return HFTokenizer(candidate)
    return ByteTokenizer()
