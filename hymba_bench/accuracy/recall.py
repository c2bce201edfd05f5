"""Synthetic associative recall (in the spirit of MQAR, Zoology), rendered as text.

A context of key-value pairs, then queries of earlier keys, each followed by its value. Keys are
distinct lowercase letters and values uppercase letters, one byte token each, written with no
separators so a pair is two adjacent tokens:

    "qAvXmBkQ|vXqA"        pairs qA vX mB kQ; queries v -> X, q -> A

Answering needs exactly the content-addressed lookup of MQAR (find the earlier occurrence of the
query key, read the token after it); an SSM must hold every pair in its fixed-size state, while
attention reads them back from its cache. Training shows every query with its answer and is
scored only on the answers; evaluation items cut before one answer, and a generation is right
when it is the gold value (`contains` over a one-token generation, as SWDE is scored). Everything
is a pure function of the seed, so a file generated twice is identical.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import write_atomic

KEYS, VALUES = string.ascii_lowercase, string.ascii_uppercase
SEPARATOR = "|"


@dataclass(frozen=True)
class RecallSpec:
    pairs: int = 8  # key-value pairs in the context
    queries: int = 8  # queries per sequence (training) / per item group (evaluation)

    def __post_init__(self) -> None:
        if not 1 <= self.pairs <= len(KEYS):
            raise HymbaBenchError(f"recall pairs: expected 1..{len(KEYS)}, got {self.pairs}")
        if not 1 <= self.queries <= self.pairs:
            raise HymbaBenchError(f"recall queries: expected 1..pairs ({self.pairs}), got {self.queries}")

    def rendered_length(self) -> int:
        """Characters (= byte tokens) of one full training sequence."""
        return 2 * self.pairs + 1 + 2 * self.queries


def _sample(rng: random.Random, spec: RecallSpec) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    keys = rng.sample(KEYS, spec.pairs)
    pairs = [(k, rng.choice(VALUES)) for k in keys]
    return pairs, rng.sample(pairs, spec.queries)


def training_example(rng: random.Random, spec: RecallSpec) -> tuple[str, list[int]]:
    """One training sequence and the character offsets of its answers (the scored positions)."""
    pairs, queries = _sample(rng, spec)
    text = "".join(k + v for k, v in pairs) + SEPARATOR
    answers = []
    for k, v in queries:
        text += k
        answers.append(len(text))
        text += v
    return text, answers


def training_text(rng: random.Random, spec: RecallSpec) -> str:
    return training_example(rng, spec)[0]


def eval_items(seed: int, n_items: int, spec: RecallSpec) -> list[dict[str, str]]:
    """Items {context, answer}: the context ends with a query key."""
    rng = random.Random(seed)
    items: list[dict[str, str]] = []
    while len(items) < n_items:
        pairs, queries = _sample(rng, spec)
        prefix = "".join(k + v for k, v in pairs) + SEPARATOR
        for i, (k, v) in enumerate(queries):  # earlier queries answered, as in training
            shown = "".join(qk + qv for qk, qv in queries[:i])
            items.append({"context": prefix + shown + k, "answer": v})
            if len(items) == n_items:
                break
    return items


def write_eval_file(path: Path, seed: int, n_items: int, spec: RecallSpec) -> Path:
    return write_atomic(path, "".join(json.dumps(item) + "\n"
                                      for item in eval_items(seed, n_items, spec)))
