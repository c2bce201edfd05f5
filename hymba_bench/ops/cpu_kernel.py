"""The compiled CPU selective scan (`csrc/selective_scan.cpp`): build, load, call.

Why compiled: on the CPU the scan's cost is per-op overhead and passes over memory, not
arithmetic. Torch ops step through time one (B, N, D) slab at a time (the chunked form in
`scan.py`, about 5x the per-step reference at B=1, D=512, N=16, L=8192) and the log-depth and
closed-form chunk alternatives read and write the (L, B, N, D) state tensor several times (about
6 s there against 0.2 s). One loop over time per block of 8 channels, the state in registers,
does the same arithmetic in one pass, about 10 ms per million state updates on 2 cores.

The source is compiled on first use with the system's C++ compiler (`$CXX`, else c++/g++/clang++,
`-O3 -march=native`, no fast-math) into `$HYMBA_BENCH_CACHE` (default ~/.cache/hymba-bench), keyed
by the source, the compiler, its flags and this CPU, so one build serves every later run; it has
no torch or Python headers, so it builds in about a second. Without a compiler, or with
`HYMBA_BENCH_CPU_KERNEL=0`, `available()` is False with the reason and the dispatch uses the
pure-PyTorch chunked scan. Calls take pointers to contiguous float32 tensors; ctypes releases the
GIL, so blocks of channels run on torch's thread count through a small thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "selective_scan.cpp"
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c++17", "-fno-math-errno"]
LANES = 8  # channels per block (the kernel's vector width); D must be a multiple
# Below this many state updates, handing blocks to other threads costs more than it saves.
_PARALLEL_MIN = 1 << 17


def _cache_dir() -> Path:
    root = os.environ.get("HYMBA_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hymba-bench")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: a build from another CPU must not be reused here."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("flags", "model name"))
                           )[:4096] or platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


@cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(library, "") or (None, why not): built at most once per process, lazily."""
    if os.environ.get("HYMBA_BENCH_CPU_KERNEL", "1") == "0":
        return None, "disabled by HYMBA_BENCH_CPU_KERNEL=0"
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found (set CXX)"
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, version, *FLAGS,
                                        _cpu_signature()]).encode()).hexdigest()[:16]
        lib_path = _cache_dir() / f"selective_scan-{key}.so"
        if not lib_path.is_file():
            lib_path.parent.mkdir(parents=True, exist_ok=True)
            # build beside the target and rename: concurrent runs never load a half-written file
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                built = Path(tmp) / lib_path.name
                proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", str(built)],
                                      capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    return None, f"the C++ build failed: {first}"
                os.replace(built, lib_path)
        lib = ctypes.CDLL(str(lib_path))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the C++ build could not run ({type(exc).__name__}: {exc})"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.hb_scan_fwd.argtypes = [ptr] * 10 + [i64] * 6
    lib.hb_scan_bwd.argtypes = [ptr] * 17 + [i64] * 6
    lib.hb_scan_fwd.restype = lib.hb_scan_bwd.restype = None
    lib.hb_max_state.restype = lib.hb_chunk.restype = ctypes.c_int
    return lib, ""


def available() -> bool:
    return _load()[0] is not None


def unavailable_reason() -> str:
    return _load()[1]


def max_state() -> int:
    lib = _load()[0]
    return int(lib.hb_max_state()) if lib is not None else 0


_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pool_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="hymba-scan")
        return _pools[workers]


def _ptr(t: Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


def _over_blocks(call: object, blocks: int, work: int) -> None:
    """Run `call(..., blk0, blk1)` over [0, blocks), split across torch's CPU threads."""
    threads = min(torch.get_num_threads(), blocks) if work >= _PARALLEL_MIN else 1
    bounds = [blocks * i // threads for i in range(threads + 1)]
    jobs = [(bounds[i], bounds[i + 1]) for i in range(threads) if bounds[i] < bounds[i + 1]]
    if len(jobs) == 1:
        call(*jobs[0])  # type: ignore[operator]
        return
    for future in [_pool(threads).submit(call, lo, hi) for lo, hi in jobs]:  # type: ignore[arg-type]
        future.result()


def scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None, keep_checkpoints: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """u, delta, z: (Bt, D, L); A: (D, N); B, C: (Bt, N, L); D: (D,) -> out (Bt, D, L), the last
    state (Bt, D, N), and the states the backward restarts from, (chunks, Bt, N, D), or None."""
    lib = _load()[0]
    assert lib is not None
    batch, d, length = u.shape
    n = A.shape[1]
    out = torch.empty_like(u)
    last = u.new_empty(batch, d, n)
    chunks = -(-length // lib.hb_chunk())
    ck = u.new_empty(chunks, batch, n, d) if keep_checkpoints else None
    args = [_ptr(t) for t in (u, delta, A, B, C, D, z, out, last, ck)]
    _over_blocks(lambda lo, hi: lib.hb_scan_fwd(*args, length, batch, d, n, lo, hi),
                 batch * d // LANES, length * batch * d * n)
    return out, last, ck


def scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None, ck: Tensor, dout: Tensor, dlast: Tensor
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz), each in its input's layout (None if absent)."""
    lib = _load()[0]
    assert lib is not None
    batch, d, length = u.shape
    n = A.shape[1]
    per_row = d // LANES
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dA = u.new_empty(batch, d, n)
    dBp = u.new_empty(per_row, batch, n, length)
    dCp = u.new_empty(per_row, batch, n, length)
    dDp = u.new_empty(batch, d)
    dz = torch.empty_like(u) if z is not None else None
    args = [_ptr(t) for t in (u, delta, A, B, C, D, z, ck, dout, dlast, du, ddelta, dA, dBp, dCp,
                              dDp, dz)]
    _over_blocks(lambda lo, hi: lib.hb_scan_bwd(*args, length, batch, d, n, lo, hi),
                 batch * per_row, length * batch * d * n)
    return (du, ddelta, dA.sum(0), dBp.sum(0), dCp.sum(0),
            dDp.sum(0) if D is not None else None, dz)


class SelectiveScanCPU(torch.autograd.Function):
    """The compiled scan under autograd. The forward keeps one state per chunk of steps and the
    backward recomputes each chunk from it: L/64 x B x N x D floats held, not L x B x N x D."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, u: Tensor, delta: Tensor, A: Tensor,
                B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None) -> tuple[Tensor, Tensor]:
        training = any(ctx.needs_input_grad)
        out, last, ck = scan_fwd(u, delta, A, B, C, D, z, keep_checkpoints=training)
        if training:
            ctx.save_for_backward(u, delta, A, B, C, D, z, ck)
        return out, last

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor, dlast: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        u, delta, A, B, C, D, z, ck = ctx.saved_tensors
        return scan_bwd(u, delta, A, B, C, D, z, ck, dout.contiguous(), dlast.contiguous())
