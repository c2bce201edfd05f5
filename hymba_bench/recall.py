"""Synthetic associative recall (in the spirit of MQAR, Zoology), rendered as text.

A context of key:value pairs, keys and values drawn from disjoint alphabets (lowercase letter
pairs; two-digit numbers), then queries of earlier keys whose answer is the paired value:

    "qa:17 vx:42 mb:08 ...|vx:42 qa:17 ..."

Training sequences show every query with its answer; evaluation items cut before one answer and
score the generation by whether it contains the gold value (as SWDE is scored). Everything is a
pure function of the seed, so a file generated twice is identical.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class RecallSpec:
    pairs: int = 16  # key:value pairs in the context
    queries: int = 8  # queries per sequence (training) / per item group (evaluation)

    def rendered_length(self) -> int:
        """Characters (= byte tokens) of one full training sequence."""
        return 6 * self.pairs + 1 + 6 * self.queries


def _pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    keys = rng.sample([a + b for a in LETTERS for b in LETTERS], n)
    return [(k, f"{rng.randrange(100):02d}") for k in keys]


def training_text(rng: random.Random, spec: RecallSpec) -> str:
    pairs = _pairs(rng, spec.pairs)
    queries = rng.sample(pairs, min(spec.queries, len(pairs)))
    return " ".join(f"{k}:{v}" for k, v in pairs) + " |" + " ".join(f"{k}:{v}" for k, v in queries) + " "


def eval_items(seed: int, n_items: int, spec: RecallSpec) -> list[dict[str, str]]:
    """Items {context, answer}: the context ends with a query key and a colon."""
    rng = random.Random(seed)
    items = []
    while len(items) < n_items:
        pairs = _pairs(rng, spec.pairs)
        queries = rng.sample(pairs, min(spec.queries, len(pairs)))
        prefix = " ".join(f"{k}:{v}" for k, v in pairs) + " |"
        for i, (k, v) in enumerate(queries):  # earlier queries answered, as in training
            shown = "".join(f"{qk}:{qv} " for qk, qv in queries[:i])
            items.append({"context": prefix + shown + f"{k}:", "answer": v})
            if len(items) == n_items:
                break
    return items


def write_eval_file(path: Path, seed: int, n_items: int, spec: RecallSpec) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in eval_items(seed, n_items, spec)))
    return path
