"""The model configuration: one dataclass, validated, with the per-layer plan derived from it.

Everything structural about a design (which mixer each layer has, which attention layers are
global, which layers reuse another layer's KV, how many meta tokens) is decided here, once, so
the model, the cache and the cache-size formula all read the same plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hymba_bench.design import mixers as mixer_registry
from hymba_bench.errors import ConfigError

MAX_SEQ_LEN = 1 << 22  # a context past 4M tokens is a typo, and the caches it sizes would not fit
FFNS = ("dense", "moe", "none")


def ntk_scale(extension: float, factor: float = 2.0) -> float:
    """The NTK scale s the released Hymba uses to stretch its context by `extension` (max / orig).

    NVIDIA's rotary embedding, for `rope_type: ntk`, sets base = theta * (factor * max / orig -
    (factor - 1)) ** (d / (d - 2)) with factor 2: s = 2 * 4 - 1 = 7 for the release's 2K -> 8K,
    not 4. No extension (1) gives s = 1, no scaling.
    """
    return factor * extension - (factor - 1)


@dataclass(frozen=True)
class LayerSpec:
    index: int
    mixer: str  # a registered mixer (`hymba_bench.design.mixers`)
    attention: str | None  # global | sliding | None (no attention in this layer)
    window: int | None  # sliding window W, None for global / no attention
    kv: str | None  # "own" | "shared:<i>" | None (no attention)
    n_kv_heads: int = 0  # KV heads of this layer's attention (0: no attention)
    ffn: str = "dense"  # dense | moe | none
    tied_to: int | None = None  # layer whose weights this layer applies (Zamba's, Zamba2's blocks)

    @property
    def has_attention(self) -> bool:
        return self.attention is not None

    @property
    def owns_kv(self) -> bool:
        return self.kv == "own"

    @property
    def kv_source(self) -> int | None:
        """Index of the layer whose K/V this layer attends over (itself when it owns them)."""
        if self.kv is None:
            return None
        return self.index if self.kv == "own" else int(self.kv.split(":")[1])

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "mixer": self.mixer,
            "attention": self.attention,
            "window": self.window,
            "kv": self.kv,
            "ffn": self.ffn,
            "tied_to": self.tied_to,
        }


@dataclass
class ModelConfig:
    name: str = "custom"
    description: str = ""
    design_reason: str = ""
    # sizes
    vocab_size: int = 512
    d_model: int = 64
    n_layers: int = 8
    n_heads: int = 4
    n_kv_heads: int = 2  # KV heads of hybrid layers (and of attention layers, unless below)
    attn_kv_heads: int | None = None  # KV heads of pure attention layers; None: n_kv_heads
    d_qk: int = 16
    # None: d_inner // n_heads if any layer is hybrid, else d_qk (worked out in __post_init__,
    # so that every reader sees an int)
    d_v: int = field(default=None, metadata={"derived": True})  # type: ignore[assignment]
    intermediate_size: int = 176
    # dense | moe (on every `moe_every`-th layer, dense elsewhere) | none
    ffn: str = field(default="dense", metadata={"choices": FFNS})
    moe_experts: int = 16
    moe_top_k: int = 2
    moe_every: int = 2  # MoE on layers i with i % moe_every == moe_every - 1 (Jamba: 1, 3, 5, ...)
    moe_aux_loss: float = field(default=0.01, metadata={"min": 0.0})  # load-balancing weight
    moe_normalize: bool = False  # top-k weights renormalised to sum 1 (Mixtral, Granite); Jamba: not
    moe_shared: int = field(default=0, metadata={"min": 0})  # a shared expert's hidden size; 0: none
    moe_shared_gate: bool = False  # the shared expert scaled by sigmoid(w . x) (Qwen3-Next)
    # structure
    layout: list[str] = field(default_factory=lambda: ["attention"],  # repeated cyclically
                              metadata={"checked": "_validate"})
    sliding_window: int | None = None
    global_layers: list[int] | None = field(  # None: first/middle/last attention layer
        default=None, metadata={"checked": "_validate"})
    # cross-layer KV sharing among sliding layers: a group size, or explicit groups of layer indices
    kv_share: int | list[list[int]] = field(default=1, metadata={"checked": "_validate"})
    shared_attention: bool = False  # every attention layer applies one set of weights (Zamba)
    meta_tokens: int = field(default=0, metadata={"min": 0})
    rope: bool = True  # False: no positional encoding (Jamba)
    # Each mixer's own settings, by mixer name: a design file's `<mixer>: {...}` blocks
    # (`hymba_bench.design.mixers`); `options(name)` gives them validated. Mamba-1's and Hyena's
    # settings predate the blocks and stay the flat fields below, so saved configs still load.
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict,
                                                     metadata={"checked": "_validate"})
    # SSM (Mamba-1)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16), as in mamba-ssm
    ssm_norms: bool = True  # RMSNorm on dt, B and C (Hymba)
    # Hyena (order 2, modal long filter as in StripedHyena)
    hyena_modes: int = 8  # complex poles per channel: the decode state per channel
    hyena_short_conv: int = 3  # depthwise short convolution on the three projections
    # misc
    rope_theta: float = 10000.0
    rope_scaling: float = 1.0  # NTK scale s: base theta * s^(d/(d-2)); see `ntk_scale`
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_seq_len: int = 2048  # training context length
    # derived in __post_init__
    d_inner: int = field(init=False)
    layers: list[LayerSpec] = field(init=False, repr=False)
    _options: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        self.d_inner = self.expand * self.d_model
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        mixers = [self.layout[i % len(self.layout)] for i in range(self.n_layers)]
        self._options = {}
        for name in dict.fromkeys([*mixers, *self.mixer_options]):  # blocks of unused mixers too
            self._options[name] = mixer_registry.build_options(
                name, mixer_registry.mixer_class(name), self.mixer_options.get(name, {}),
                ConfigError, self)
        if self.d_v is None:
            self.d_v = self.d_inner // self.n_heads if "hybrid" in mixers else self.d_qk
        if "hybrid" in mixers and self.n_heads * self.d_v != self.d_inner:
            raise ConfigError(
                f"d_v: hybrid layers need n_heads * d_v == d_inner ({self.d_inner}), "
                f"got {self.n_heads} * {self.d_v}"
            )
        self.layers = _plan_layers(self, mixers)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        mixer_registry.check_fields(self, ConfigError)  # every field, by its annotation
        if self.max_seq_len > MAX_SEQ_LEN:
            raise ConfigError(f"max_seq_len: expected at most {MAX_SEQ_LEN:,} tokens, got "
                              f"{self.max_seq_len:,}")
        if self.meta_tokens >= self.max_seq_len:
            raise ConfigError(f"meta_tokens: {self.meta_tokens} meta tokens leave no room in the "
                              f"{self.max_seq_len}-token context (max_seq_len)")
        if self.moe_top_k > self.moe_experts:
            raise ConfigError(f"moe_top_k: expected at most moe_experts ({self.moe_experts}), "
                              f"got {self.moe_top_k}")
        if self.moe_shared_gate and not self.moe_shared:
            raise ConfigError("moe_shared_gate: gates a shared expert, but moe_shared is 0 (none)")
        if isinstance(self.kv_share, list):
            if not self.kv_share or not all(
                isinstance(g, list) and len(g) >= 2 and all(_is_int(i) for i in g)
                for g in self.kv_share
            ):
                raise ConfigError("kv_share: expected a group size or a list of groups of two or "
                                  f"more layer indices, got {self.kv_share!r}")
        elif not _is_int(self.kv_share) or self.kv_share < 1:
            raise ConfigError(f"kv_share: expected a group size or a list of groups of two or "
                              f"more layer indices, got {self.kv_share!r}")
        for key in ("n_kv_heads", "attn_kv_heads"):
            value = getattr(self, key)
            if value is not None and self.n_heads % value:
                raise ConfigError(f"{key}: must divide n_heads ({self.n_heads}), got {value}")
        if self.d_qk % 2:
            raise ConfigError(f"d_qk: RoPE needs an even head dimension, got {self.d_qk}")
        if not isinstance(self.layout, list) or not self.layout:
            raise ConfigError(f"layout: expected a non-empty list of mixers, got {self.layout!r}")
        known = mixer_registry.names()
        for mixer in self.layout:
            if not isinstance(mixer, str) or mixer not in known:
                mixer_registry.mixer_class(str(mixer))  # raises, naming the close match
        if not isinstance(self.mixer_options, dict):
            raise ConfigError(f"mixer_options: expected a mapping of mixer name to options, got "
                              f"{self.mixer_options!r}")
        for name in self.mixer_options:
            if name not in known:
                raise ConfigError(f"{name}: not a registered mixer (mixers: {', '.join(known)})")
        if self.global_layers is not None:
            if not isinstance(self.global_layers, list) or not all(
                _is_int(i) for i in self.global_layers
            ):
                raise ConfigError(
                    f"global_layers: expected a list of layer indices, got {self.global_layers!r}"
                )
            for i in self.global_layers:
                if not 0 <= i < self.n_layers:
                    raise ConfigError(
                        f"global_layers: index {i} out of range for {self.n_layers} layers"
                    )

    # ------------------------------------------------------------------ derived views
    @property
    def kv_layers(self) -> list[LayerSpec]:
        """Layers that hold their own K/V in the cache."""
        return [spec for spec in self.layers if spec.owns_kv]

    def options(self, mixer: str) -> Any:
        """Mixer `mixer`'s validated Options (its defaults where the design gives no block)."""
        if mixer not in self._options:
            self._options[mixer] = mixer_registry.build_options(
                mixer, mixer_registry.mixer_class(mixer), {}, ConfigError, self)
        return self._options[mixer]

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (no derived fields): `ModelConfig(**cfg.to_dict())` round-trips."""
        out = asdict(self)
        for f in fields(self):
            if not f.init:
                out.pop(f.name)
        return out

    @classmethod
    def init_keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plan_layers(cfg: ModelConfig, mixers: list[str]) -> list[LayerSpec]:
    attends = {m: bool(mixer_registry.mixer_class(m).has_attention) for m in set(mixers)}
    attn_idx = [i for i, m in enumerate(mixers) if attends[m]]
    window = cfg.sliding_window
    if window is None:
        if cfg.global_layers:
            raise ConfigError("global_layers: only meaningful with a sliding_window")
        global_set = set(attn_idx)
    else:
        if cfg.global_layers is None:
            # The released Hymba keeps full attention in the first, middle and last layers.
            picks = {0, (len(attn_idx) - 1) // 2, len(attn_idx) - 1} if attn_idx else set()
            global_set = {attn_idx[p] for p in picks}
        else:
            for i in cfg.global_layers:
                if i not in attn_idx:
                    raise ConfigError(
                        f"global_layers: layer {i} is a {mixers[i]} layer and has no attention"
                    )
            global_set = set(cfg.global_layers)

    kind = {i: ("global" if i in global_set else "sliding") for i in attn_idx}
    kv = {i: "own" for i in attn_idx}
    for group in _kv_groups(cfg, mixers, attn_idx, kind):
        for consumer in group[1:]:
            kv[consumer] = f"shared:{group[0]}"

    def ffn_of(i: int) -> str:
        if cfg.ffn == "moe":
            return "moe" if i % cfg.moe_every == cfg.moe_every - 1 else "dense"
        return cfg.ffn

    tied: dict[int, int] = {}
    if cfg.shared_attention:
        # Zamba: one attention block (attention + FFN, one set of weights) applied at every
        # attention position; each application still reads and writes its own KV.
        blocks = [i for i, m in enumerate(mixers) if m == "attention"]
        if not blocks:
            raise ConfigError("shared_attention: the layout has no attention layers to share")
        if any(role != "own" for role in kv.values()):
            raise ConfigError("shared_attention: cannot be combined with kv_share")
        for i in blocks[1:]:
            if ffn_of(i) != ffn_of(blocks[0]):
                raise ConfigError(f"shared_attention: layers {blocks[0]} and {i} would apply the "
                                  f"shared block with different FFNs ({ffn_of(blocks[0])}, {ffn_of(i)})")
            tied[i] = blocks[0]
    for m in dict.fromkeys(mixers):  # mixers that share weights among their own layers (Zamba2)
        ties = getattr(mixer_registry.mixer_class(m), "tied_layers", None)
        if ties is not None:
            tied.update(ties(cfg, [i for i, x in enumerate(mixers) if x == m]))

    return [
        LayerSpec(
            index=i,
            mixer=m,
            attention=kind.get(i),
            window=window if kind.get(i) == "sliding" else None,
            kv=kv.get(i),
            n_kv_heads=0 if i not in kind else
            (cfg.attn_kv_heads or cfg.n_kv_heads) if m == "attention" else cfg.n_kv_heads,
            ffn=ffn_of(i),
            tied_to=tied.get(i),
        )
        for i, m in enumerate(mixers)
    ]


def _kv_groups(cfg: ModelConfig, mixers: list[str], attn_idx: list[int],
               kind: dict[int, str]) -> list[list[int]]:
    """Cross-layer KV groups (first member produces, the rest consume), validated."""
    if isinstance(cfg.kv_share, list):
        seen: set[int] = set()
        for group in cfg.kv_share:
            for i in group:
                if not 0 <= i < cfg.n_layers:
                    raise ConfigError(f"kv_share: layer {i} out of range for {cfg.n_layers} layers")
                if i not in kind:
                    raise ConfigError(f"kv_share: layer {i} is a {mixers[i]} layer and has no attention")
                if i in seen:
                    raise ConfigError(f"kv_share: layer {i} is in more than one group")
                seen.add(i)
            if group != sorted(group):
                raise ConfigError(f"kv_share: group {group} must list layers in increasing order")
            between = [g for g in kind if group[0] <= g <= group[-1] and kind[g] == "global"]
            if between:  # a global layer keeps its own full KV; a window's KV cannot stand in
                raise ConfigError(f"kv_share: group {group} crosses global layer {between[0]}")
            if len({mixers[i] for i in group}) > 1:
                raise ConfigError(f"kv_share: group {group} mixes {sorted({mixers[i] for i in group})} "
                                  "layers, whose K/V differ in shape")
        return [list(g) for g in cfg.kv_share]
    if cfg.kv_share == 1:
        return []
    # Runs of sliding layers consecutive among the attention layers and of one mixer (so their
    # K/V have one shape); a global layer ends a run.
    runs: list[list[int]] = []
    previous: int | None = None
    for i in attn_idx:
        if kind[i] == "sliding":
            if previous is not None and kind[previous] == "sliding" and mixers[previous] == mixers[i]:
                runs[-1].append(i)
            else:
                runs.append([i])
        previous = i
    if not runs:
        raise ConfigError("kv_share: cross-layer KV sharing needs sliding-window layers")
    longest = max(len(run) for run in runs)
    if cfg.kv_share > longest:
        raise ConfigError(f"kv_share: groups of {cfg.kv_share} do not fit: the longest run of "
                          f"consecutive sliding layers has {longest}")
    return [group for run in runs for group in _split_groups(run, cfg.kv_share) if len(group) > 1]


def _split_groups(run: list[int], size: int) -> list[list[int]]:
    """Split a run into groups of `size`; the remainder joins the first group.

    This reproduces the released 1.5B grouping, where the 15-layer run 16..30 becomes
    [16, 17, 18] followed by pairs.
    """
    n_groups = max(1, len(run) // size)
    first = len(run) - size * (n_groups - 1)
    groups = [run[:first]]
    groups += [run[j:j + size] for j in range(first, len(run), size)]
    return groups
