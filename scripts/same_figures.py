"""Do two runs give the same figures? For a change that must not move them (a refactor):
`python scripts/same_figures.py RUN_BEFORE RUN_AFTER` compares every exact metric (declared
`exact`, and the paper's cache MB) and every accuracy figure (deterministic on one machine: same
seeds, same data) of the designs both measured, prints each difference, and exits 1 on any, or
when there was nothing to compare. Timings are left out: they are measured, not computed."""

from __future__ import annotations

import sys
from pathlib import Path

from hymba_bench.api.metrics import METRICS, exact
from hymba_bench.results.records import RunDir


def compared(metric: str) -> bool:
    base = metric.removesuffix("_seed")
    return metric in exact() or metric == "cache_mb" or (
        base in METRICS and METRICS[base].stage == "accuracy")


def main(before: Path, after: Path) -> int:
    old, new = RunDir(before).records().latest(), RunDir(after).records().latest()
    keys = sorted(k for k in set(old) & set(new) if compared(k[1]))
    differ = [(k, old[k].value, new[k].value) for k in keys if old[k].value != new[k].value]
    for (variant, metric), a, b in differ:
        print(f"{variant} {metric}: {a!r} -> {b!r}")
    designs = sorted({v for v, _ in keys})
    only = sorted({k for k in set(old) ^ set(new) if compared(k[1])})
    print(f"{len(keys)} figures of {len(designs)} designs compared "
          f"({sum(m in exact() for _, m in keys)} exact, the rest accuracy): "
          f"{len(differ)} differ; {len(only)} measured in one run only")
    return 1 if differ or not keys else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
