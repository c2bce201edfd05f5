"""Efficiency baselines and the regression check CI runs against them.

A baseline keeps, per design, the exact metrics (those declared `exact` in `api.metrics`:
parameters, cache bytes), which must match exactly, and the timed ones (throughput) with their
samples, each judged in its declared direction (`higher_is_better`). Throughput is compared as a
ratio to a reference design measured in the same run, which cancels a slower or busier machine;
when the machine fingerprint (device, threads, torch) matches, the absolute figures are compared
too. A throughput
check fails only when the change passes the tolerance *and* is significant given both runs'
samples (`timing.significant`): two runs of the same code on a noisy machine do not fail.
Ratios are taken round by round, since a run times its designs interleaved (sample i of every
design comes from round i).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hymba_bench.api.metrics import METRICS, exact, timed
from hymba_bench.bench.timing import LOAD_LIMIT, significant
from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import read_input
from hymba_bench.results.records import Record, RunDir

FORMAT = "hymba-bench-baseline/1"
EXACT = exact()
SPEED = timed()
FINGERPRINT = ("device", "device_type", "threads", "torch")
SETTINGS = ("profile", "context", "batch", "gen_tokens", "dtype")


def _latest(run_dir: Path) -> dict[str, dict[str, Record]]:
    """variant -> metric -> the last record of it in the run."""
    out: dict[str, dict[str, Record]] = {}
    for (variant, metric), r in RunDir(run_dir).records().latest().items():
        out.setdefault(variant, {})[metric] = r
    if not out:
        raise HymbaBenchError(f"{run_dir}: no measurements")
    return out


def _speed_record(run: dict[str, dict[str, Record]]) -> Record:
    for metrics in run.values():
        if "decode_tok_s" in metrics:
            return metrics["decode_tok_s"]
    raise HymbaBenchError("the run has no throughput measurements (was it run with --skip throughput?)")


def make_baseline(run_dir: Path, reference: str = "llama",
                  allow_unstable: bool = False) -> dict[str, Any]:
    """The baseline of a run; a run with throughput figures marked unstable (spread or load) is
    refused unless `allow_unstable`, since every later check would be held to them."""
    run = _latest(run_dir)
    if reference not in run:
        raise HymbaBenchError(f"{reference!r} was not measured in {run_dir} "
                              f"(measured: {', '.join(run)})", param="reference")
    speed = _speed_record(run)
    timed = [r for metrics in run.values() for m, r in metrics.items() if m in SPEED]
    unstable = [r for r in timed if r.get("unstable")]
    if unstable and not allow_unstable:
        first = unstable[0]
        raise HymbaBenchError(f"{len(unstable)} of the run's {len(timed)} throughput figures are "
                              f"unstable ({first.variant} {first.metric}: {first.get('unstable')}); "
                              "re-run on an idle machine, or accept them with `allow_unstable`")
    variants = {}
    for name, metrics in run.items():
        variants[name] = {
            "exact": {m: metrics[m].value for m in EXACT if m in metrics},
            "throughput": {m: {"value": metrics[m].value, "spread": metrics[m].get("spread"),
                               "samples": _samples(metrics[m])}
                           for m in SPEED if m in metrics},
        }
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": speed.get("git_commit"),
        "reference": reference,
        "fingerprint": {k: speed.get(k) for k in FINGERPRINT},
        "settings": {k: speed.get(k) for k in SETTINGS},
        "variants": variants,
    }


def load_baseline(path: Path) -> dict[str, Any]:
    if not Path(path).exists():
        raise HymbaBenchError(f"no such file {path}", param="baseline")
    try:
        data = json.loads(read_input(Path(path), "baseline"))
    except json.JSONDecodeError as exc:
        raise HymbaBenchError(f"{path} is not valid JSON ({exc.msg})", param="baseline") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HymbaBenchError(f"{path} is not a {FORMAT} file", param="baseline")
    return data


@dataclass
class Check:
    variant: str
    metric: str
    kind: str  # exact | vs-reference | absolute
    baseline: float | None
    current: float | None
    ok: bool
    note: str = ""
    judged: bool = True  # False: timed on a busy machine, no verdict either way


@dataclass
class Comparison:
    checks: list[Check] = field(default_factory=list)
    same_machine: bool = False
    baseline: dict[str, Any] = field(default_factory=dict)
    current_fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def speed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.kind != "exact"]

    @property
    def unjudged(self) -> list[Check]:
        return [c for c in self.speed_checks if not c.judged]

    @property
    def judged_nothing(self) -> bool:
        """No throughput check came to a verdict: a PASS would say nothing about speed."""
        return not any(c.judged for c in self.speed_checks)

    def busy_designs(self) -> list[str]:
        return sorted({c.variant for c in self.unjudged})


def compare(baseline: dict[str, Any], run_dir: Path, tolerance: float = 0.15,
            abs_tolerance: float | None = None) -> Comparison:
    if not 0 <= tolerance < 1:
        raise HymbaBenchError(f"expected a fraction in [0, 1), got {tolerance}", param="tolerance")
    abs_tol = tolerance if abs_tolerance is None else abs_tolerance
    run = _latest(run_dir)
    speed = _speed_record(run)
    settings = {k: speed.get(k) for k in SETTINGS}
    if settings != baseline["settings"]:
        raise HymbaBenchError(f"the run's benchmark settings {settings} differ from the baseline's "
                              f"{baseline['settings']}; re-run with the same ones")
    fingerprint = {k: speed.get(k) for k in FINGERPRINT}
    out = Comparison(same_machine=fingerprint == baseline["fingerprint"], baseline=baseline,
                     current_fingerprint=fingerprint)
    ref = baseline["reference"]
    for name, base in baseline["variants"].items():
        cur = run.get(name, {})
        for metric, value in base["exact"].items():
            now = cur[metric].value if metric in cur else None
            out.checks.append(Check(name, metric, "exact", value, now, now == value,
                                    "not measured" if now is None else ""))
        for metric, entry in base["throughput"].items():
            now = cur[metric].value if metric in cur else None
            if now is None:
                out.checks.append(Check(name, metric, "vs-reference", entry["value"], None, False,
                                        "not measured"))
                continue
            base_ref_entry = baseline["variants"][ref]["throughput"].get(metric, {})
            base_ref = base_ref_entry.get("value")
            ref_record = run.get(ref, {}).get(metric)
            cur_ref = ref_record.value if ref_record is not None else None
            samples = _samples(cur[metric])
            busy = _busy(cur[metric])
            if busy:  # load changes ratios too (small-op designs lose more): no verdict either way
                out.checks.append(Check(name, metric, "vs-reference", None, None, True,
                                        f"not judged: {busy}; re-run on an idle machine",
                                        judged=False))
            elif name != ref and base_ref and cur_ref:
                b, c = entry["value"] / base_ref, now / cur_ref
                noisy = _ratios(entry.get("samples"), base_ref_entry.get("samples")), \
                    _ratios(samples, _samples(ref_record) if ref_record is not None else None)
                out.checks.append(_speed_check(name, metric, "vs-reference", b, c, tolerance, *noisy,
                                               higher=_higher(metric)))
            if out.same_machine and not busy:
                # times, not speeds: slower means larger; invert so that both read "higher is better"
                noisy = ([1 / t for t in entry.get("samples") or []] or None,
                         [1 / t for t in samples or []] or None)
                out.checks.append(_speed_check(name, metric, "absolute", entry["value"], now,
                                               abs_tol, *noisy, higher=_higher(metric)))
    return out


def _busy(record: Record) -> str | None:
    """Why a figure was timed on a busy machine (other processes above the load limit), or None."""
    others = (record.get("timing") or {}).get("others_cpu")
    if others is not None and others > LOAD_LIMIT:
        return f"other processes used {others:.0%} of the CPU while it was timed"
    return None


def _samples(record: Record) -> list[float] | None:
    return (record.get("timing") or {}).get("samples")


def _ratios(design: list[float] | None, reference: list[float] | None) -> list[float] | None:
    """Round-by-round speed relative to the reference: its time over the design's."""
    if not design or not reference or len(design) != len(reference):
        return None
    return [r / d for d, r in zip(design, reference, strict=True)]


def _higher(metric: str) -> bool:
    """Which way `metric` is better, as declared; a timed metric must say."""
    higher = METRICS[metric].higher_is_better if metric in METRICS else None
    if higher is None:
        raise HymbaBenchError(f"{metric}: its declaration says neither higher nor lower is better, "
                              "so a regression cannot be judged")
    return higher


def _speed_check(name: str, metric: str, kind: str, base: float, now: float, tolerance: float,
                 base_samples: list[float] | None, now_samples: list[float] | None,
                 higher: bool = True) -> Check:
    """A regression passes the tolerance in the metric's worse direction and stands out from the
    noise (the samples are times either way: the significance test is two-sided)."""
    change = f"{now / base - 1:+.1%}" if base else "n/a"
    # within the tolerance in the worse direction: no more than `tolerance` lower (higher)
    if (now >= base * (1 - tolerance)) if higher else (now <= base * (1 + tolerance)):
        return Check(name, metric, kind, base, now, True, change)
    if base_samples and now_samples and not significant(base_samples, now_samples):
        return Check(name, metric, kind, base, now, True, f"{change}, within the runs' noise")
    return Check(name, metric, kind, base, now, False, change)


def report(cmp: Comparison, tolerance: float, abs_tolerance: float | None = None) -> str:
    """A Markdown report fit for a pull-request comment."""
    base = cmp.baseline
    unjudged = len(cmp.unjudged)
    if cmp.failed:
        verdict = "FAIL"
    elif cmp.judged_nothing:
        verdict = ("NOT JUDGED (no throughput check came to a verdict: the run was timed on a busy "
                   "machine; re-time it with --retime, or run on an idle one)")
    else:
        verdict = "PASS" + (f" ({unjudged} throughput checks not judged: timed on a busy machine)"
                            if unjudged else "")
    lines = [
        f"## hymba-bench efficiency regression check: {verdict}",
        "",
        f"Baseline from commit `{base.get('git_commit')}` ({base.get('created')}), profile "
        f"`{base['settings'].get('profile')}`, context {base['settings'].get('context')}, batch "
        f"{base['settings'].get('batch')}. Throughput is compared as a ratio to "
        f"`{base['reference']}` measured in the same run (tolerance {tolerance:.0%}; a drop "
        "fails only if it is also significant given both runs' samples, permutation test, 5%)"
        + (f", and in absolute terms on the same machine (tolerance "
           f"{(abs_tolerance if abs_tolerance is not None else tolerance):.0%})."
           if cmp.same_machine else "; the machine differs from the baseline's, so absolute "
           "figures are not compared."),
        "",
        f"Baseline machine: {_fp(base['fingerprint'])}. This run: {_fp(cmp.current_fingerprint)}.",
        "",
        "| design | metric | check | baseline | current | change | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cmp.checks:
        lines.append(f"| {c.variant} | {c.metric} | {c.kind} | {_num(c.baseline)} | {_num(c.current)} "
                     f"| {c.note} | {'ok' if c.ok else '**REGRESSION**'} |")
    if cmp.failed:
        lines += ["", f"{len(cmp.failed)} check(s) failed."]
    return "\n".join(lines) + "\n"


def _fp(fp: dict[str, Any]) -> str:
    return (f"{fp.get('device')} ({fp.get('device_type')}, {fp.get('threads')} threads, "
            f"torch {fp.get('torch')})")


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    if float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"


def check(baseline: Path, current: Path, tolerance: float = 0.15,
          abs_tolerance: float | None = None, retime_tries: int = 0,
          on_retime: Callable[[list[str], int], None] | None = None) -> Comparison:
    """`compare` a run with a baseline file; with `retime_tries`, figures timed on a busy machine
    are timed again (`retime`) up to that many times before the verdict."""
    base = load_baseline(baseline)
    cmp = compare(base, current, tolerance, abs_tolerance)
    for k in range(1, retime_tries + 1):
        if not cmp.unjudged:
            break
        busy = cmp.busy_designs()
        if on_retime is not None:
            on_retime(busy, k)
        retime(current, busy, base["reference"])
        cmp = compare(base, current, tolerance, abs_tolerance)
    return cmp


def retime(run_dir: Path, designs: list[str], reference: str) -> None:
    """Time `designs` and `reference` again, together, with the settings their records name
    (profile, device, context, batch asked for, steps, repeats, decode mode), appending the new
    figures to the run's results (the latest wins): what `regress --retime` does for figures
    timed on a busy machine."""
    import torch

    from hymba_bench.api.run import Design, Job, Silent, execute
    from hymba_bench.bench.stages import ThroughputStage
    from hymba_bench.design.registry import resolve, variants_dir
    from hymba_bench.runner import open_run
    from hymba_bench.settings import BenchOverrides, bench_settings

    rd = RunDir(run_dir)
    records = rd.records()
    names = list(dict.fromkeys([reference, *designs]))
    timed = [records.get(n, "decode_tok_s") for n in names]
    if any(r is None for r in timed):
        raise HymbaBenchError(f"{run_dir}: cannot re-time {', '.join(names)}: not all were timed")
    first = timed[0]
    assert first is not None
    device = "cuda" if first.get("device_type") == "cuda" else "cpu"
    profile = first.profile
    files = sorted({Path(r.get("variant_file")) for r in timed if r is not None and r.get("variant_file")
                    and Path(r.get("variant_file")).parent != variants_dir()})
    overrides = BenchOverrides(context=first.get("context"), batch=first.get("requested_batch"),
                               gen_tokens=first.get("gen_tokens"), repeats=first.get("repeats"),
                               warmup=first.get("warmup"), dtype=first.get("dtype"))
    resolved = [resolve(n, profile, files) for n in names]
    bench = {rv.config.name: bench_settings(rv.profile, torch.device(device), overrides)
             for rv in resolved}
    designs_ = [Design(i, rv) for i, rv in enumerate(resolved, 1)]
    stage = ThroughputStage(bench, device)
    with rd.lock():
        results, stamp = open_run(rd, True, device, profile, designs_)
        jobs = [Job(d, frozenset(stage.metrics), records.of(d.name)) for d in designs_]
        execute(stage, jobs, results, stamp, Silent())
