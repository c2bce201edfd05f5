"""The contract of a Hugging Face adapter: one per `model_type`, as torchtitan keeps a
`state_dict_adapter.py` beside each model. An adapter reads `config.json` into our design and
names each HF parameter by ours; `hymba_bench.model.hf` does the loading, strictly, for all."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from hymba_bench.design.config import ModelConfig
from hymba_bench.errors import HymbaBenchError

if TYPE_CHECKING:
    from torch import Tensor


class HFAdapter:
    """Subclasses set `model_types` and `layer_keys` / `top_keys`, and implement `config`."""

    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""  # what the README's table of families calls it
    # (HF pattern after "model.layers.<i>.", ours after "layers.<i>."); groups as in re.sub
    layer_keys: ClassVar[list[tuple[str, str]]] = []
    top_keys: ClassVar[dict[str, str]] = {}
    ignored: ClassVar[re.Pattern[str]] = re.compile(r".*rotary_emb\.inv_freq$")  # recomputed
    layer_prefix: ClassVar[str] = "model.layers"

    def config(self, hf: dict[str, Any], name: str) -> ModelConfig:
        raise NotImplementedError

    def convert(self, state: dict[str, Tensor], cfg: ModelConfig,
                hf: dict[str, Any]) -> dict[str, Tensor]:
        """Where the layouts differ beyond names: the HF tensors rewritten (fused projections
        split or joined, weights re-parametrised, constant multipliers folded in) before
        `map_key` names them. `hf` is the checkpoint's config.json."""
        return state

    def map_key(self, key: str) -> str | None:
        """An HF parameter name -> ours (None: it maps nowhere)."""
        if key in self.top_keys:
            return self.top_keys[key]
        m = re.fullmatch(re.escape(self.layer_prefix) + r"\.(\d+)\.(.+)", key)
        if m is not None:
            for pattern, ours in self.layer_keys:
                if re.fullmatch(pattern, m.group(2)):
                    return f"layers.{m.group(1)}." + re.sub(pattern, ours, m.group(2))
        return None


def refuse_unmodelled(hf: dict[str, Any], fixed: list[tuple[str, tuple[Any, ...], str]]) -> None:
    """`fixed`: (key, the values we implement, what another value would change). A setting we
    do not model is refused, rather than computing another function."""
    for key, allowed, what in fixed:
        if hf.get(key) not in allowed:
            raise HymbaBenchError(f"config.json: {key}={hf[key]!r} ({what}) is not supported")


def layer_mixers(kinds: Any, mapping: dict[str, str], shown: list[str] | None = None,
                 refused: dict[str, str] | None = None) -> list[str]:
    """config.json's per-layer types (`layers_block_type`) -> our mixers by `mapping`; a type
    in `refused` says why it is not supported, any other unknown type lists `shown` (default:
    `mapping`'s names)."""
    if not isinstance(kinds, list) or not kinds:
        raise HymbaBenchError(f"config.json: layers_block_type={kinds!r}: expected a list of "
                              "layer types")
    for kind in kinds:
        if refused and kind in refused:
            raise HymbaBenchError(f"config.json: a {kind!r} layer ({refused[kind]}) is not "
                                  "supported")
        if kind not in mapping:
            raise HymbaBenchError(f"config.json: layer type {kind!r} is not one of "
                                  f"{sorted(shown or mapping)}")
    return [mapping[kind] for kind in kinds]


def rope_theta(hf: dict[str, Any]) -> float:
    """transformers 5 keeps rotary settings in `rope_parameters`, 4 at the top level; only the
    plain (unscaled) rotary is modelled for these families."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in (None, "default"):
        raise HymbaBenchError(f"config.json: rope_type {kind!r} (scaled rotary positions) is not "
                              "supported for this family")
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def multiplier(hf: dict[str, Any], key: str) -> float:
    """A constant scale of config.json (µP's), 1 where absent: a positive number."""
    value = hf.get(key, 1.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise HymbaBenchError(f"config.json: {key}={value!r}: expected a positive number")
    return float(value)


def multipliers(hf: dict[str, Any], key: str, count: int) -> list[float]:
    """A list of `count` such scales, all 1 where absent or null (as transformers defaults it)."""
    values = hf.get(key)
    if values is None:
        return [1.0] * count
    if not isinstance(values, list) or len(values) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise HymbaBenchError(f"config.json: {key}={values!r}: expected a list of {count} "
                              "positive numbers")
    return [float(v) for v in values]


def scaled(t: Tensor, factor: float | Tensor) -> Tensor:
    """`t * factor` in float64, back in t's dtype: a multiplier folded into a weight."""
    if isinstance(factor, float) and factor == 1.0:
        return t
    return (t.double() * factor).to(t.dtype)


def need(hf: dict[str, Any], key: str, family: str) -> Any:
    if key not in hf or hf[key] is None:
        raise HymbaBenchError(f"config.json: missing {family} key {key!r}")
    return hf[key]
