# lm-eval resolves `!function hooks.NAME` beside the YAML files; the code lives in the package.
from hymba_bench.accuracy.tasks import (
    contains_results,
    local_dataset,
    recall_dataset,
    text_dataset,
    text_results,
)

__all__ = ["contains_results", "local_dataset", "recall_dataset", "text_dataset", "text_results"]
