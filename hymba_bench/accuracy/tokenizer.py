"""Tokenizers: bytes by default (no downloads); a Hugging Face checkpoint's own tokenizer (its
`tokenizer.json`, or the vocabulary inside a GGUF file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

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
    """A `tokenizers.Tokenizer` (a checkpoint's `tokenizer.json`), with its BOS and EOS ids read
    as transformers reads them: `tokenizer_config.json`'s `bos_token` / `eos_token`, else
    `config.json`'s `bos_token_id` / `eos_token_id`. Without a BOS token, BOS is EOS, the prefix
    lm-eval's HF model conditions an empty context on."""

    def __init__(self, tok: Any, bos: int | None, eos: int | None, where: Path) -> None:
        """`bos` / `eos`: the ids the checkpoint names (None: not named)."""
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        if eos is None:
            vocab = tok.get_vocab()
            eos = vocab.get("</s>", vocab.get("<|end_of_text|>", vocab.get("<|endoftext|>")))
        if eos is None:
            raise HymbaBenchError(f"{where}: no EOS token (tokenizer_config.json eos_token or "
                                  "config.json eos_token_id)", param="checkpoint")
        self.eos_id, self.bos_id = int(eos), int(bos) if bos is not None else int(eos)

    @classmethod
    def from_file(cls, path: Path) -> HFTokenizer:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise HymbaBenchError(f"{path}: loading a Hugging Face tokenizer needs the "
                                  "'tokenizers' package (pip install tokenizers)") from None
        try:
            tok = _Tok.from_file(str(path))
        except Exception as exc:  # the tokenizers package raises its own types
            raise HymbaBenchError(f"{path}: not a tokenizer.json ({_first_line(exc)})",
                                  param="checkpoint") from None
        special = _special_ids(path.parent, tok)
        return cls(tok, special["bos"], special["eos"], path.parent)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _special_ids(folder: Path, tok: Any) -> dict[str, int | None]:
    """BOS / EOS ids of a checkpoint directory, as transformers' tokenizer would have them."""
    def read(name: str) -> dict[str, Any]:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    tok_cfg, cfg = read("tokenizer_config.json"), read("config.json")
    out: dict[str, int | None] = {}
    for kind in ("bos", "eos"):
        key = f"{kind}_token"
        if key in tok_cfg:  # present, even as null: the tokenizer's own word on it
            token = tok_cfg[key]
            content = token.get("content") if isinstance(token, dict) else token
            out[kind] = tok.token_to_id(content) if isinstance(content, str) else None
            if isinstance(content, str) and out[kind] is None:
                raise HymbaBenchError(f"{folder / 'tokenizer_config.json'}: {key} {content!r} is "
                                      "not in tokenizer.json's vocabulary", param="checkpoint")
        else:
            value = cfg.get(f"{kind}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            out[kind] = value if isinstance(value, int) and not isinstance(value, bool) else None
    return out


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _gguf_tokenizer(path: Path) -> HFTokenizer:
    """The vocabulary a GGUF file carries, built by transformers' GGUF reader."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise HymbaBenchError(f"{path}: a GGUF file's tokenizer needs transformers "
                              "(pip install 'hymba-bench[hf]')", param="checkpoint") from None
    try:
        fast = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers' reader raises many types
        raise HymbaBenchError(f"{path}: no tokenizer could be read from the file "
                              f"({_first_line(exc)})", param="checkpoint") from None
    return HFTokenizer(fast.backend_tokenizer, fast.bos_token_id, fast.eos_token_id, path)


def load_tokenizer(checkpoint: Path | None) -> Tokenizer:
    """A Hugging Face checkpoint's own tokenizer (required: scoring its weights through another
    would measure nothing); our own checkpoints and fresh models use bytes."""
    if checkpoint is None:
        return ByteTokenizer()
    from hymba_bench.model.hf import is_hf_checkpoint
    from hymba_bench.model.hf.gguf import is_gguf

    path = Path(checkpoint)
    if is_gguf(path):
        return _gguf_tokenizer(path)
    candidate = path / "tokenizer.json"
    if candidate.is_file():
        return HFTokenizer.from_file(candidate)
    if is_hf_checkpoint(path):
        raise HymbaBenchError(f"{path}: no tokenizer.json beside config.json: a Hugging Face "
                              "checkpoint is scored through its own tokenizer",
                              param="checkpoint")
    return ByteTokenizer()
