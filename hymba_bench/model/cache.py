"""The inference cache, preallocated from the layer plan, and its analytic size.

Per layer, by its role in `ModelConfig.layers`:
- global attention, own KV:  K (B, n_kv, M + S, d_qk), V (B, n_kv, M + S, d_v), S = max real tokens
- sliding attention, own KV: the M meta-token slots plus a ring of R = min(W + 1, S) slots (the keys
  `masks.visible` lets a query see: itself and the W before it); a real token at absolute position
  p >= M lives in slot M + (p - M) % R
- KV consumers (`shared:i`): nothing; they read layer i's buffers
- recurrent state, as each layer's mixer declares it (`state_shapes` on its class, found through
  the mixer registry: the cache imports no mixer): e.g. Mamba-1's conv (B, d_inner, d_conv - 1)
  and SSM (B, d_inner, d_state) states, Hyena's short-conv and modal states

`cache_bytes` is the formula: K/V written out here, recurrent state from each mixer's
`state_elements`, which its file writes from the mixer's equations, not from its shapes;
`InferenceCache.nbytes()` sums what was allocated; tests hold them equal for every variant.
`cache_mb_paper` is the paper's Table 1 convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hymba_bench.design.config import LayerSpec, ModelConfig
from hymba_bench.design.masks import window_keys
from hymba_bench.design.mixers import mixer_class


def ring_slots(spec: LayerSpec, seq_len: int) -> int:
    """Slots of a sliding layer's ring for sequences of up to `seq_len` real tokens."""
    assert spec.window is not None
    return min(window_keys(spec.window), seq_len)


def kv_slots(cfg: ModelConfig, spec: LayerSpec, seq_len: int) -> int:
    if spec.attention == "sliding":
        return cfg.meta_tokens + ring_slots(spec, seq_len)
    return cfg.meta_tokens + seq_len


def state_elements(cfg: ModelConfig) -> int:
    """Recurrent-state elements per sequence, summed over layers: independent of context length."""
    return sum(mixer_class(spec.mixer).state_elements(cfg, spec) for spec in cfg.layers)


def cache_bytes(cfg: ModelConfig, batch: int, seq_len: int, dtype: torch.dtype = torch.float16) -> int:
    """Exact bytes the inference cache allocates for `batch` sequences of up to `seq_len` tokens."""
    elem = torch.empty((), dtype=dtype).element_size()
    total = 0
    for spec in cfg.kv_layers:
        total += batch * spec.n_kv_heads * kv_slots(cfg, spec, seq_len) * (cfg.d_qk + cfg.d_v)
    total += batch * state_elements(cfg)
    return total * elem


def cache_mb_paper(cfg: ModelConfig, seq_len: int) -> float:
    """Table 1's convention: FP16, batch 1, MB = 10^6 bytes, meta tokens not counted, W tokens per
    sliding layer (the paper's count; the ring really holds W + 1, see `masks`)."""
    total = 0
    for spec in cfg.kv_layers:
        window = spec.window if spec.attention == "sliding" else None
        tokens = seq_len if window is None else min(window, seq_len)
        total += 2 * tokens * spec.n_kv_heads * (cfg.d_qk + cfg.d_v)
    total += 2 * state_elements(cfg)
    return total / 1e6


@dataclass
class LayerCache:
    k: Tensor | None = None  # (B, n_kv, slots, d_qk), RoPE already applied
    v: Tensor | None = None  # (B, n_kv, slots, d_v)
    key_pos: Tensor | None = None  # (slots,) long: absolute position held by each KV slot, -1 empty
    # recurrent state by name, as the layer's mixer declares it (`state_shapes`): e.g. Mamba's
    # conv (B, d_inner, d_conv - 1) and ssm (B, d_inner, d_state)
    state: dict[str, Tensor] = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        """What the cache holds for the model (the bytes the formula counts); not `key_pos`."""
        return [t for t in (self.k, self.v) if t is not None] + list(self.state.values())

    def states(self) -> list[Tensor]:
        """The recurrent states, rewritten whole by every step."""
        return list(self.state.values())


class InferenceCache:
    """State for prefill-then-step decoding of `batch` equal-length sequences.

    Why the position lives on the device: a decode step reads it (RoPE angles, the slot it writes,
    the mask) and advances it in place, so one step is one static graph, the same for every
    position: `torch.compile(fullgraph=True)` compiles it once and a CUDA graph can replay it.
    Every tensor here is written in place and never rebound, so a captured graph stays valid.
    `pos` is a host mirror of `position` for bookkeeping outside the step (overflow checks,
    `checkpoint`); compiled or replayed steps cannot advance it, so it is re-read from the device
    (one synchronisation) the next time it is asked for.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.batch = batch
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.device = torch.device(device)
        self.position = torch.zeros((), dtype=torch.long, device=device)  # next position to write
        self._host_pos: int | None = 0
        self.prefilled = False
        self.layers: list[LayerCache] = []
        for spec in cfg.layers:
            entry = LayerCache()
            if spec.owns_kv:
                slots = kv_slots(cfg, spec, max_seq_len)
                shape = (batch, spec.n_kv_heads, slots)
                entry.k = torch.zeros(*shape, cfg.d_qk, dtype=dtype, device=device)
                entry.v = torch.zeros(*shape, cfg.d_v, dtype=dtype, device=device)
                entry.key_pos = torch.empty(slots, dtype=torch.long, device=device)
            for name, shape in mixer_class(spec.mixer).state_shapes(cfg, spec, batch).items():
                entry.state[name] = torch.zeros(*shape, dtype=dtype, device=device)
            self.layers.append(entry)
        self._reset_key_positions()

    # ------------------------------------------------------------------ positions
    @property
    def pos(self) -> int:
        """Absolute positions filled so far, meta tokens included (host copy of `position`)."""
        if self._host_pos is None:
            self._host_pos = int(self.position)
        return self._host_pos

    @property
    def real_tokens(self) -> int:
        return max(0, self.pos - self.cfg.meta_tokens)

    def advance(self, positions: int, real: int) -> None:
        """Account for a forward pass over `positions` rows (`real` of them tokens, the rest meta).

        Raises on overflow in eager code; inside a compiled step the host mirror is dropped
        instead (read back from the device when next needed), since a step must not synchronise.
        """
        if torch.compiler.is_compiling():
            self._host_pos = None
            return
        if self.real_tokens + real > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} tokens; {self.real_tokens} used, "
                             f"{real} more requested")
        self._host_pos = self.pos + positions

    def forget_host_position(self) -> None:
        """Steps ran where the host could not count them (a CUDA-graph replay)."""
        self._host_pos = None

    def _reset_key_positions(self) -> None:
        for spec, entry in zip(self.cfg.layers, self.layers, strict=True):
            if entry.key_pos is None:
                continue
            if spec.attention == "sliding":
                entry.key_pos.fill_(-1)
            else:  # global slots are absolute positions; the mask hides those not yet written
                entry.key_pos.copy_(torch.arange(entry.key_pos.numel(), device=self.device))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for e in self.layers for t in e.tensors())

    def _bookkeeping(self) -> list[Tensor]:
        return [self.position] + [e.key_pos for e in self.layers if e.key_pos is not None]

    def tile(self, batch: int) -> InferenceCache:
        """A cache for `batch` sequences, each a copy of this batch-1 cache's state."""
        if self.batch != 1:
            raise ValueError("tile() copies a batch-1 cache")
        out = InferenceCache(self.cfg, batch, self.max_seq_len, self.dtype, self.device)
        out._host_pos, out.prefilled = self._host_pos, self.prefilled
        for src, dst in zip(self.layers, out.layers, strict=True):
            for s, d in zip(src.tensors(), dst.tensors(), strict=True):
                d.copy_(s.expand_as(d))
        for s, d in zip(self._bookkeeping(), out._bookkeeping(), strict=True):
            d.copy_(s)
        return out

    def checkpoint(self, steps: int) -> Callable[[], None]:
        """Save what the next `steps` decode steps overwrite; calling the result undoes them.

        Global K/V past `pos` need no saving (the mask hides them until rewritten); sliding rings
        lose the slots the new tokens land in; states and positions are small and copied whole.
        Everything is restored in place, so a captured decode graph stays valid.
        """
        pos, host = self.pos, self._host_pos
        saved: list[tuple[Tensor, Tensor, Tensor]] = []
        for spec, entry in zip(self.cfg.layers, self.layers, strict=True):
            if spec.attention == "sliding" and entry.k is not None and entry.v is not None:
                slots = torch.tensor(sorted({self.slot_of(spec, p) for p in range(pos, pos + steps)}),
                                     device=self.device)
                saved += [(t, slots, t[..., slots, :].clone()) for t in (entry.k, entry.v)]
        small = [(t, t.clone()) for e in self.layers for t in e.states()]
        small += [(t, t.clone()) for t in self._bookkeeping()]

        def restore() -> None:
            self._host_pos = host
            for buf, slots, values in saved:
                buf[..., slots, :] = values
            for t, copy in small:
                t.copy_(copy)

        return restore

    def reset(self) -> None:
        self.position.zero_()
        self._host_pos, self.prefilled = 0, False
        for entry in self.layers:
            for t in entry.tensors():
                t.zero_()
        self._reset_key_positions()

    # ------------------------------------------------------------------ KV slot bookkeeping
    def slot_of(self, spec: LayerSpec, position: int) -> int:
        m = self.cfg.meta_tokens
        if spec.attention == "sliding" and position >= m:
            return m + (position - m) % ring_slots(spec, self.max_seq_len)
        return position

    def slot_positions(self, spec: LayerSpec, end: int) -> Tensor:
        """Absolute position held by each KV slot once positions 0..end-1 are written (-1: empty)."""
        m = self.cfg.meta_tokens
        if spec.attention != "sliding":
            return torch.arange(end, device=self.device)
        ring = ring_slots(spec, self.max_seq_len)
        meta = torch.arange(m, device=self.device)
        meta = torch.where(meta < end, meta, torch.full_like(meta, -1))
        j = torch.arange(ring, device=self.device)
        last = end - 1 - m - j  # how far past slot j's first position the newest write is
        latest = m + j + ring * torch.div(last, ring, rounding_mode="floor")
        latest = torch.where(last >= 0, latest, torch.full_like(latest, -1))
        return torch.cat([meta, latest])

    def write_prefill(self, spec: LayerSpec, k: Tensor, v: Tensor) -> None:
        """Store a fresh prefill's K/V (B, n_kv, L, d) for positions 0..L-1 (meta tokens first)."""
        entry = self.layers[spec.index]
        assert entry.k is not None and entry.v is not None and entry.key_pos is not None
        length = k.shape[2]
        if spec.attention != "sliding":
            entry.k[:, :, :length] = k
            entry.v[:, :, :length] = v
            return
        m = self.cfg.meta_tokens
        entry.k[:, :, :m] = k[:, :, :m]
        entry.v[:, :, :m] = v[:, :, :m]
        ring = entry.k.shape[2] - m
        first = max(m, length - ring)  # only the newest `ring` real tokens survive
        positions = torch.arange(first, length, device=k.device)
        slots = m + (positions - m) % ring
        entry.k[:, :, slots] = k[:, :, first:length]
        entry.v[:, :, slots] = v[:, :, first:length]
        entry.key_pos.copy_(self.slot_positions(spec, length))

    def update_kv(self, spec: LayerSpec, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One decode step's K/V (B, n_kv, 1, d) written at `position`, with no host round trip.

        Returns the whole buffers and the position each slot holds, for `masks.visible`: a step
        attends over every slot (a static shape), and the mask hides what it may not see.
        """
        entry = self.layers[spec.index]
        assert entry.k is not None and entry.v is not None and entry.key_pos is not None
        pos = self.position.view(1)
        slot = pos
        if spec.attention == "sliding":  # decode positions are past the meta tokens
            m = self.cfg.meta_tokens
            slot = m + torch.remainder(pos - m, ring_slots(spec, self.max_seq_len))
        entry.k.index_copy_(2, slot, k.to(entry.k.dtype))
        entry.v.index_copy_(2, slot, v.to(entry.v.dtype))
        entry.key_pos.index_copy_(0, slot, pos)
        return entry.k, entry.v, entry.key_pos
