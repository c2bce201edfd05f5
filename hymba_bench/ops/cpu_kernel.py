"""The compiled CPU kernels (`csrc/`: the selective scan, the depthwise causal conv, RMSNorm, the
gated delta rule's forward):
build, load, call.

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
pure-PyTorch chunked scan. Calls take pointers to float32 tensors; ctypes releases the GIL, so
blocks of channels run on torch's thread count through a small thread pool.

Layouts: the scan's and the conv's (B, D, L) inputs are read through their strides, and their
outputs are written time-major, (B, L, D), returned as (B, D, L) views. A mixer works time-major
(its projections' rows are tokens), so its transposed slices reach the kernels without a copy and
the kernels' outputs reach the next projection without one: in a training step of the tiny B
design that removed ~60 copies, 254 -> 224 ms (median of 8 alternations of the two trees, 1
thread; Mamba 181 -> 167, F 468 -> 441).
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / "selective_scan.cpp", CSRC / "causal_conv.cpp", CSRC / "rms_norm.cpp",
           CSRC / "delta_rule.cpp"]  # one library
HEADERS = [CSRC / "simd.h"]
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
    return load_from(CSRC)


def load_from(csrc: Path) -> tuple[ctypes.CDLL | None, str]:
    """The library built from the sources in `csrc` (this package's, or another revision's for
    an A/B timing: scripts/train_step_ab.py --kernels-from), cached by their text."""
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found (set CXX)"
    sources = [csrc / p.name for p in SOURCES]
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        texts = [p.read_text() for p in (*sources, *(csrc / h.name for h in HEADERS))]
        key = hashlib.sha256("\0".join([*texts, cxx, version, *FLAGS,
                                        _cpu_signature()]).encode()).hexdigest()[:16]
        lib_path = _cache_dir() / f"hymba_kernels-{key}.so"
        if not lib_path.is_file():
            lib_path.parent.mkdir(parents=True, exist_ok=True)
            # build beside the target and rename: concurrent runs never load a half-written file
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                built = Path(tmp) / lib_path.name
                proc = subprocess.run([cxx, *FLAGS, *map(str, sources), "-o", str(built)],
                                      capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                    return None, f"the C++ build failed: {first}"
                os.replace(built, lib_path)
        lib = ctypes.CDLL(str(lib_path))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the C++ build could not run ({type(exc).__name__}: {exc})"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.hb_scan_fwd.argtypes = [ptr] * 12 + [i64] * 7
    lib.hb_scan_bwd.argtypes = [ptr] * 20 + [i64] * 7
    lib.hb_conv_fwd.argtypes = [ptr] * 5 + [i64] * 7
    lib.hb_conv_bwd.argtypes = [ptr] * 9 + [i64] * 7
    lib.hb_rmsnorm_fwd.argtypes = [ptr] * 4 + [i64, i64, ctypes.c_float, i64, i64]
    lib.hb_rmsnorm_bwd.argtypes = [ptr] * 6 + [i64] * 4
    lib.hb_rmsnorm_fwd.restype = lib.hb_rmsnorm_bwd.restype = None
    lib.hb_delta_rule_fwd.argtypes = [ptr] * 8 + [i64] * 7
    lib.hb_delta_rule_fwd.restype = None
    lib.hb_norm_rows.restype = i64
    lib.hb_scan_fwd.restype = lib.hb_scan_bwd.restype = None
    lib.hb_conv_fwd.restype = lib.hb_conv_bwd.restype = None
    lib.hb_max_state.restype = lib.hb_chunk.restype = ctypes.c_int
    return lib, ""


def available() -> bool:
    return _load()[0] is not None


def unavailable_reason() -> str:
    return _load()[1]


def _lib() -> ctypes.CDLL:
    """The loaded library, for callers the dispatch chose because it is `available()`."""
    lib = _load()[0]
    assert lib is not None, unavailable_reason()
    return lib


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


def _ptr(t: Tensor | None, strided: bool = False) -> int | None:
    """A float32 CPU tensor's address. Contiguous, as the kernel indexes it, unless `strided`:
    an input the kernel reads through the strides it is handed beside it (`_Strides`)."""
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.device.type == "cpu" and (strided or t.is_contiguous())
    return t.data_ptr()


class _Strides:
    """The strides of (B, channels, L) views, three per tensor (zeros for an absent one), as the
    kernels' `st` arrays; keep the object alive for the call."""

    def __init__(self, *views: Tensor | None) -> None:
        values = [s for v in views for s in (v.stride() if v is not None else (0, 0, 0))]
        self.array = (ctypes.c_int64 * len(values))(*values)

    @property
    def ptr(self) -> int:
        return ctypes.addressof(self.array)


def _time_major(batch: int, channels: int, length: int, like: Tensor) -> Tensor:
    """A kernel's output, (B, L, channels) contiguous; its caller returns the (B, channels, L)
    view, so the next projection reads the memory without a copy."""
    return like.new_empty(batch, length, channels)


def _over_blocks(call: Callable[[int, int], object], blocks: int, work: int) -> None:
    """Run `call(..., blk0, blk1)` over [0, blocks), split across torch's CPU threads."""
    threads = min(torch.get_num_threads(), blocks) if work >= _PARALLEL_MIN else 1
    bounds = [blocks * i // threads for i in range(threads + 1)]
    jobs = [(bounds[i], bounds[i + 1]) for i in range(threads) if bounds[i] < bounds[i + 1]]
    if len(jobs) == 1:
        call(*jobs[0])
        return
    for future in [_pool(threads).submit(call, lo, hi) for lo, hi in jobs]:
        future.result()


def scan_fwd(u: Tensor, delta: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None, z: Tensor | None, softplus: bool, keep_checkpoints: bool
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    """u, delta, z: (Bt, D, L); bias, D: (D,); A: (D, N); B, C: (Bt, N, L) -> out (Bt, D, L), the
    last state (Bt, D, N), and the states the backward restarts from, (chunks, Bt, N, D), or None.
    The recurrence's delta is softplus(delta + bias) (each optional), computed in the kernel.
    u, delta, z, B, C are read by their strides; out is a view of time-major memory."""
    lib = _lib()
    batch, d, length = u.shape
    n = A.shape[1]
    out = _time_major(batch, d, length, u)
    last = u.new_empty(batch, d, n)
    chunks = -(-length // lib.hb_chunk())
    ck = u.new_empty(chunks, batch, n, d) if keep_checkpoints else None
    st = _Strides(u, delta, z, B, C)
    args = [_ptr(u, True), _ptr(delta, True), _ptr(bias), _ptr(A), _ptr(B, True), _ptr(C, True),
            _ptr(D), _ptr(z, True), _ptr(out), _ptr(last), _ptr(ck)]
    _over_blocks(lambda lo, hi: lib.hb_scan_fwd(*args, st.ptr, length, batch, d, n, int(softplus),
                                                lo, hi),
                 batch * d // LANES, length * batch * d * n)
    return out.transpose(1, 2), last, ck


def scan_bwd(u: Tensor, delta: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None, z: Tensor | None, softplus: bool, ck: Tensor, dout: Tensor,
             dlast: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients (du, ddelta, dbias, dA, dB, dC, dD, dz), each of its input's shape (None if
    absent), the (B, ., L) ones views of time-major memory; ddelta is the delta given's, before
    bias and softplus. dout is read by its strides."""
    lib = _lib()
    batch, d, length = u.shape
    n = A.shape[1]
    per_row = d // LANES
    du, ddelta = _time_major(batch, d, length, u), _time_major(batch, d, length, u)
    dA = u.new_empty(batch, d, n)
    dBp = u.new_empty(per_row, batch, length, n)
    dCp = u.new_empty(per_row, batch, length, n)
    dDp, dbp = u.new_empty(batch, d), u.new_empty(batch, d)
    dz = _time_major(batch, d, length, u) if z is not None else None
    st = _Strides(u, delta, z, B, C, dout)
    args = [_ptr(u, True), _ptr(delta, True), _ptr(bias), _ptr(A), _ptr(B, True), _ptr(C, True),
            _ptr(D), _ptr(z, True), _ptr(ck), _ptr(dout, True), _ptr(dlast),
            *(_ptr(t) for t in (du, ddelta, dA, dBp, dCp, dDp, dbp, dz))]
    _over_blocks(lambda lo, hi: lib.hb_scan_bwd(*args, st.ptr, length, batch, d, n, int(softplus),
                                                lo, hi),
                 batch * per_row, length * batch * d * n)
    return (du.transpose(1, 2), ddelta.transpose(1, 2), dbp.sum(0) if bias is not None else None,
            dA.sum(0), dBp.sum(0).transpose(1, 2), dCp.sum(0).transpose(1, 2),
            dDp.sum(0) if D is not None else None, None if dz is None else dz.transpose(1, 2))


class SelectiveScanCPU(torch.autograd.Function):
    """The compiled scan under autograd. The forward keeps one state per chunk of steps and the
    backward recomputes each chunk from it: L/64 x B x N x D floats held, not L x B x N x D."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor,
                bias: Tensor | None, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                z: Tensor | None, softplus: bool) -> tuple[Tensor, Tensor]:
        training = any(ctx.needs_input_grad)
        out, last, ck = scan_fwd(u, delta, bias, A, B, C, D, z, softplus, keep_checkpoints=training)
        if training:
            ctx.softplus = softplus
            ctx.save_for_backward(u, delta, bias, A, B, C, D, z, ck)
        return out, last

    @staticmethod
    def backward(ctx: Any, dout: Tensor, dlast: Tensor
                 ) -> tuple[Tensor | None, ...]:
        u, delta, bias, A, B, C, D, z, ck = ctx.saved_tensors
        return (*scan_bwd(u, delta, bias, A, B, C, D, z, ctx.softplus, ck, dout,
                          dlast.contiguous()), None)


def conv_fwd(x: Tensor, w: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """x: (B, D, L) read by its strides, w: (D, K), bias: (D,) -> the causal depthwise conv
    (B, D, L), a view of time-major memory, SiLU'd if asked. D: a multiple of LANES."""
    lib = _lib()
    batch, d, length = x.shape
    k = w.shape[1]
    out = _time_major(batch, d, length, x)
    sx = _Strides(x)
    x_, w_, b_, o_ = _ptr(x, True), _ptr(w), _ptr(bias), _ptr(out)
    _over_blocks(lambda lo, hi: lib.hb_conv_fwd(x_, sx.ptr, w_, b_, o_, batch, d, length, k,
                                                int(silu), lo, hi),
                 batch * d // LANES, batch * d * length * k)
    return out.transpose(1, 2)


def conv_bwd(x: Tensor, w: Tensor, bias: Tensor | None, dout: Tensor, silu: bool
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients (dx, dw, dbias) of `conv_fwd`, dx a view of time-major memory; the
    pre-activation is recomputed from x. x and dout are read by their strides."""
    lib = _lib()
    batch, d, length = x.shape
    k = w.shape[1]
    dx = _time_major(batch, d, length, x)
    dwp, dbp = x.new_empty(batch, d, k), x.new_empty(batch, d)
    sx, sd = _Strides(x), _Strides(dout)
    x_, g_ = _ptr(x, True), _ptr(dout, True)
    w_, b_, dx_, dw_, db_ = (_ptr(t) for t in (w, bias, dx, dwp, dbp))
    _over_blocks(lambda lo, hi: lib.hb_conv_bwd(x_, sx.ptr, w_, b_, g_, sd.ptr, dx_, dw_, db_,
                                                batch, d, length, k, int(silu), lo, hi),
                 batch * d // LANES, batch * d * length * k)
    return dx.transpose(1, 2), dwp.sum(0), dbp.sum(0) if bias is not None else None


class CausalConv1dCPU(torch.autograd.Function):
    """The compiled conv under autograd; the backward recomputes the pre-activation from x."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor,
                bias: Tensor | None, silu: bool) -> Tensor:
        ctx.silu = silu
        ctx.save_for_backward(x, w, bias)
        return conv_fwd(x, w, bias, silu)

    @staticmethod
    def backward(ctx: Any, dout: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor | None, None]:
        x, w, bias = ctx.saved_tensors
        return (*conv_bwd(x, w, bias, dout, ctx.silu), None)


def rms_norm_fwd(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x: (R, d), w: (d,) -> (out (R, d), 1/rms per row (R,))."""
    lib = _lib()
    rows, d = x.shape
    out, rstd = torch.empty_like(x), x.new_empty(rows)
    blocks = -(-rows // lib.hb_norm_rows())
    args = [_ptr(t) for t in (x, w, out, rstd)]
    _over_blocks(lambda lo, hi: lib.hb_rmsnorm_fwd(*args, rows, d, eps, lo, hi), blocks, rows * d)
    return out, rstd


def rms_norm_bwd(x: Tensor, w: Tensor, rstd: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dw) of `rms_norm_fwd`."""
    lib = _lib()
    rows, d = x.shape
    blocks = -(-rows // lib.hb_norm_rows())
    dx, dwp = torch.empty_like(x), x.new_empty(blocks, d)
    args = [_ptr(t) for t in (x, w, rstd, dy, dx, dwp)]
    _over_blocks(lambda lo, hi: lib.hb_rmsnorm_bwd(*args, rows, d, lo, hi), blocks, rows * d)
    return dx, dwp.sum(0)


class RMSNormCPU(torch.autograd.Function):
    """The compiled RMSNorm under autograd, over rows of x's last dimension."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, eps: float) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out, rstd = rms_norm_fwd(rows, w, eps)
        ctx.save_for_backward(rows, w, rstd)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        rows, w, rstd = ctx.saved_tensors
        dx, dw = rms_norm_bwd(rows, w, rstd, dy.reshape(rows.shape).contiguous())
        return dx.view(dy.shape), dw, None


def delta_rule_fwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                   state: Tensor | None) -> tuple[Tensor, Tensor]:
    """q, k (B, L, H, K), v (B, L, H, V), g, beta (B, L, H), state (B, H, K, V) or None, float32
    -> (o (B, L, H, V), final state (B, H, K, V)). V: a multiple of LANES."""
    lib = _lib()
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
    state = None if state is None else state.contiguous()
    o, last = v.new_empty(batch, length, heads, dv), v.new_empty(batch, heads, dk, dv)
    args = [_ptr(t) for t in (q, k, v, g, beta, state, o, last)]
    _over_blocks(lambda lo, hi: lib.hb_delta_rule_fwd(*args, batch, length, heads, dk, dv, lo, hi),
                 batch * heads, length * batch * heads * dk * dv)
    return o, last
