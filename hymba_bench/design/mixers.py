"""The mixer registry: a layout name -> the class that implements it, imported only when used.

A mixer is one file under `hymba_bench/model/` holding one `nn.Module` class that says everything
the rest of the harness needs to know about it (the contract every entry keeps):

- `cls(cfg, spec)` builds it for one layer; `mixer(x, ctx)` maps (B, L, D) -> (B, L, D), reading
  and writing its decode state through `ctx.state(spec.index)`;
- `Options`: a dataclass of the mixer's own settings, written in a design file as a block under
  the mixer's name (`mamba2: {head_dim: 64, n_groups: 1}`), each field validated by its
  annotation (`check_fields`), then as a whole against the model by its optional
  `validate(cfg)` (one-line `ConfigError`s); `ModelConfig.options(name)` gives it;
- `has_attention`: whether the layer attends (it then takes part in the KV plan: global or
  sliding, own or shared K/V);
- `state_shapes(cfg, spec, batch)`: the decode state it needs, by name, which the cache
  allocates; `state_elements(cfg, spec)`: the same state's size per sequence, written out from
  the mixer's equations rather than from the shapes, so that a test can hold the two equal;
- optionally `takes_stream = True`: the layer hands it the residual stream un-normed (it holds
  its own norms: Zamba2's block adds to the Mamba-2 layer's input before that layer's norm);
- optionally `tied_layers(cfg, indices)` -> {layer: the layer whose weights it applies}, over the
  layers of this mixer, and `tie_to(source)`, which takes the shared part of `source`'s weights
  (Zamba2's blocks applied in turn; each application keeps the rest, and its state, as its own);
- optionally `reset_mixer_parameters()`: its own initialisation (dt, A, filter poles), run after
  the generic one;
- optionally `Branch`: the class that can stand as the SSM branch of hybrid heads
  (`hybrid: {ssm: <name>}`): built as `Branch(cfg, spec)`, it says its slice of the heads' input
  projection (`in_width`) and its output width (`out_width(cfg)`, which must be the attention
  heads' d_inner), and maps that slice to its output with `branch(proj, cache_entry, decode)`.

Nothing here imports torch: `list` and design-file checks stay instant. A new mixer is its file,
its op (with a `*_ref` twin) and one line below.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from functools import cache
from typing import Any

from hymba_bench.errors import ConfigError

MIXERS: dict[str, str] = {
    "attention": "hymba_bench.model.attention:Attention",
    "mamba": "hymba_bench.model.ssm:Mamba",
    "hybrid": "hymba_bench.model.hybrid:HybridHeads",
    "hyena": "hymba_bench.model.hyena:Hyena",
    "mamba2": "hymba_bench.model.mamba2:Mamba2",
    "mlp": "hymba_bench.model.mlp:MLP",
    "gated_deltanet": "hymba_bench.model.gated_deltanet:GatedDeltaNet",
    "parallel": "hymba_bench.model.parallel:Parallel",
    "zamba2": "hymba_bench.model.zamba2:Zamba2Hybrid",
}


def names() -> list[str]:
    return list(MIXERS)


@cache
def mixer_class(name: str) -> Any:
    """The class registered as `name` (imports its module, and torch, on first use)."""
    if name not in MIXERS:
        close = difflib.get_close_matches(name, list(MIXERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"layout: unknown mixer {name!r}{hint}, expected one of {list(MIXERS)}")
    module, attr = MIXERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A mixer with no settings of its own (its sizes are the model's)."""


# ------------------------------------------------------------------ field validation
# One checker for every dataclass of settings (ModelConfig and every mixer's Options): a field is
# validated by its annotation, so that a field added later cannot be accepted unchecked. Bounds
# come from the field's metadata: {"min": m} (an integer or a number at least m; ints default to
# 1, floats to "positive"), {"choices": (...)} for strings; {"checked": "..."} names the custom
# code that validates a field the annotation cannot describe.
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_kinds(cls: type) -> dict[str, tuple[str, bool]]:
    """Each init field of `cls` -> (its base kind, whether None is allowed)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
            typing.get_origin(hint) is typing.Union else ()
        optional = type(None) in args
        base = [a for a in args if a is not type(None)] if args else [hint]
        kind = base[0].__name__ if len(base) == 1 and isinstance(base[0], type) else "custom"
        out[f.name] = (kind, optional)
    return out


def check_fields(obj: Any, error: type[Exception], prefix: str = "") -> None:
    """Validate every init field of the dataclass instance `obj` by its annotation; raise `error`
    with one line naming `prefix + field` on the first bad value."""
    meta = {f.name: f.metadata for f in dataclasses.fields(obj)}
    for name, (kind, optional) in field_kinds(type(obj)).items():
        value, bounds, key = getattr(obj, name), meta[name], prefix + name
        optional = optional or bounds.get("derived", False)  # None: worked out after the check
        if value is None and optional:
            continue
        none = " or null" if optional else ""
        if kind == "int":
            low = bounds.get("min", 1)
            if not _is_int(value) or value < low:
                what = "a positive integer" if low == 1 else f"an integer >= {low}"
                raise error(f"{key}: expected {what}{none}, got {value!r}")
        elif kind == "float":
            low = bounds.get("min")
            if not _is_number(value) or not math.isfinite(value) or (
                    value < low if low is not None else value <= 0):
                what = f"a number >= {low:g}" if low is not None else "a positive number"
                raise error(f"{key}: expected {what}{none}, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise error(f"{key}: expected true or false{none}, got {value!r}")
        elif kind == "str":
            choices = bounds.get("choices")
            if not isinstance(value, str) or (choices is not None and value not in choices):
                what = f"one of {list(choices)}" if choices is not None else "a string"
                raise error(f"{key}: expected {what}{none}, got {value!r}")
        elif "checked" not in bounds:
            raise TypeError(f"{type(obj).__name__}.{name}: a field of kind {kind!r} needs "
                            "metadata={'checked': ...} naming the code that validates it")


def build_options(name: str, cls: Any, block: Any, error: type[Exception], cfg: Any) -> Any:
    """Mixer `name`'s Options from its design-file block (a mapping), every key validated, then
    the whole against the model `cfg` (`Options.validate`)."""
    options = getattr(cls, "Options", NoOptions)
    if not isinstance(block, dict):
        raise error(f"{name}: expected a mapping of {name}'s options, got {block!r}")
    known = [f.name for f in dataclasses.fields(options) if f.init]
    for key in block:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = f"; valid: {', '.join(known)}" if known else f"; {name} has no options"
            raise error(f"{name}: {key}: unknown option{hint}{valid}")
    out = options(**block)
    check_fields(out, error, prefix=f"{name}: ")
    validate = getattr(out, "validate", None)
    if validate is not None:
        try:
            validate(cfg)
        except error as exc:
            raise error(f"{name}: {exc}") from None
    return out
