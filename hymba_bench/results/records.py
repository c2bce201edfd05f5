"""The results file: one JSON object per measurement, appended the moment it exists.

Each line holds `variant`, `metric`, `value`, `unit` and the context it was measured in (profile,
device, dtype, backend, batch, sequence length, threads, git commit, versions, timestamp), so a
table can be rebuilt from the file alone and an interrupted run loses at most the measurement in
flight. A torn last line (a kill mid-write) is ignored on reading.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from hymba_bench.errors import HymbaBenchError

UNITS = {
    "params": "count",
    "cache_bytes": "bytes",
    "cache_bytes_analytic": "bytes",
    "cache_mb": "MB (10^6 B, paper convention)",
    "prefill_tok_s": "tokens/s",
    "decode_tok_s": "tokens/s",
    "peak_memory_bytes": "bytes",
    "decode_roofline_pct": "% of the memory-bandwidth bound",
}


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._checked = False

    def _drop_torn_tail(self) -> None:
        """Cut a last line left unfinished by a kill, so the next record starts on its own line."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        """One line, written whole under an exclusive lock: the accuracy stage's worker processes
        append to the same file, and a torn tail found under the lock is a crash's, never a
        writer's in flight."""
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        with self.path.open("ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if not self._checked:
                    self._drop_torn_tail()
                    self._checked = True
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise HymbaBenchError(f"{self.path}: not UTF-8 text (byte {exc.start}); is it a "
                                  "hymba-bench results file?") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):  # torn by an interrupt: drop it, it is re-measured
                    continue
                raise HymbaBenchError(f"{self.path}:{number}: not a JSON line") from None
        return records

    def done(self) -> set[tuple[str, str, str]]:
        """(variant, metric, profile) triples already measured."""
        out = set()
        for r in self.load():
            # a note standing for a metric that cannot be measured here settles that metric too
            metric = r.get("metric_missing") or r["metric"]
            out.add((r["variant"], metric, r.get("profile", "")))
        return out


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `<out>/.lock` while a run writes there: a second run into the same directory stops
    with one line instead of interleaving its records with the first's."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = (out / ".lock").open("a+")
    except OSError as exc:
        raise HymbaBenchError(f"--out: cannot write to {out}: {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise HymbaBenchError(f"{out}: another hymba-bench run is writing here ({holder}); "
                                  "wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit measured, "-dirty" when the working tree differs from it (uncommitted code, or
    a copy whose git metadata is older than its files): a figure names the code behind it."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7",
                              "--exclude=*"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: Any) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from hymba_bench.bench.profile import machine

    return str(machine()["cpu"])


def base_context(device: Any) -> dict[str, Any]:
    """What every record of a run shares: machine, versions, commit."""
    import torch

    import hymba_bench
    from hymba_bench.ops import backend_report

    return {
        "device": device_name(device),
        "device_type": str(torch.device(device).type),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hymba_bench": hymba_bench.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "backend": backend_report(device),
    }


def recorder(results: ResultsFile, rv: Any, context: dict[str, Any],
             profile: str) -> Callable[..., None]:
    """`record(metric, value, **extra)` for one design (a `ResolvedVariant`): appended at once,
    with the run's context and the design's table placement."""
    vctx = {**context, "profile": profile, "table_label": rv.info["table_label"],
            "table_section": rv.info["table_section"], "design_reason": rv.info["design_reason"],
            "order": rv.variant.keys.get("order", 1000), "variant_file": str(rv.variant.path)}

    def record(metric: str, value: float, **extra: Any) -> None:
        results.append(make_record(rv.config.name, metric, value, vctx, **extra))

    return record


def make_record(variant: str, metric: str, value: float | int | str, base: dict[str, Any], /,
                **extra: Any) -> dict[str, Any]:
    return {
        "variant": variant,
        "metric": metric,
        "value": value,
        "unit": UNITS.get(metric, ""),
        **base,
        **extra,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
