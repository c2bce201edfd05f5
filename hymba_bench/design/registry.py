"""The variant registry: YAML design files composed with size profiles into a `ModelConfig`.

A variant file (`variants/<name>.yaml`) says what a design is: its layer layout, attention kinds,
KV sharing, meta tokens, and where it sits in Table 1. A profile (`variants/profiles/<name>.yaml`)
says how big every design is built. Resolution, lowest precedence first:

    ModelConfig defaults < profile sizes (base, or large for `size: large`) < the `extends` chain,
    ancestor first < the variant's own keys < keyword overrides

`sliding_window: true` and `meta_tokens: true` mean "the profile's window / count". Nothing here
imports torch, so listing and inspecting designs is instant.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from hymba_bench.design import mixers
from hymba_bench.design.config import ConfigError, ModelConfig, ntk_scale
from hymba_bench.design.masks import window_keys
from hymba_bench.errors import HymbaBenchError
from hymba_bench.files import check_name, read_yaml

# Keys a variant file may hold besides ModelConfig's own fields.
META_KEYS = {
    "name": "the registered name",
    "extends": "a registered variant whose keys this one starts from",
    "description": "one line for `hymba-bench list`",
    "design_reason": "Table 1's Design Reason column",
    "table_label": "the row label in Table 1",
    "table_section": "ablation, scaling or other",
    "size": "base or large: which of the profile's sizes to use",
    "in_all": "false keeps the variant out of `--variants all`",
    "fixed_size": "true: the file gives every size itself and no profile resizes it",
    "context_extension": "multiply the training context (and NTK-scale RoPE) by this factor",
    "cache_seq_len": "context at which to report the cache (default: the profile's)",
    "order": "position in listings and tables (Table 1 order for the roadmap rows)",
}


ORDER_DEFAULT = 1000  # a design file without `order` sorts after the roadmap's rows
SECTIONS = ("ablation", "scaling", "other")  # Table 1's sections, and the other designs'


class RegistryError(HymbaBenchError):
    """A lookup or a variant/profile file that cannot be used; the message is one line."""


def package_data(kind: str) -> Path:
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / kind, package / kind):  # source checkout, then installed wheel
        if candidate.is_dir():
            return candidate
    raise RegistryError(f"cannot find the {kind}/ folder next to the hymba_bench package")


def variants_dir() -> Path:
    return package_data("variants")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    window: int
    meta_tokens: int
    cache_seq_len: int
    sizes: dict[str, dict[str, Any]]
    path: Path
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)  # throughput settings per device
    train: dict[str, Any] = field(default_factory=dict)  # the accuracy stage's proxy-training budget
    eval: dict[str, Any] = field(default_factory=dict)  # ... and its evaluation settings


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    keys: dict[str, Any] = field(hash=False)  # as written in the file

    @property
    def description(self) -> str:
        return str(self.keys.get("description", ""))


@dataclass
class ResolvedVariant:
    variant: Variant
    profile: Profile
    config: ModelConfig
    info: dict[str, Any]  # resolved meta keys (table label, section, cache_seq_len, ...)


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    data = read_yaml(path, what)
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_keys() -> set[str]:
    """ModelConfig's keys a file may give (mixer options go in blocks named after the mixer)."""
    return set(ModelConfig.init_keys()) - {"mixer_options"}


# What each meta key must hold: (test, what it expects), checked when the file is read.
META_TYPES: dict[str, tuple[Any, str]] = {
    "extends": (lambda v: isinstance(v, str), "a variant name"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "design_reason": (lambda v: isinstance(v, str), "a string"),
    "table_label": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "table_section": (lambda v: v in SECTIONS, f"one of {', '.join(SECTIONS)}"),
    "size": (lambda v: isinstance(v, str), "a size of the profile (base, large)"),
    "in_all": (lambda v: isinstance(v, bool), "true or false"),
    "fixed_size": (lambda v: isinstance(v, bool), "true or false"),
    "context_extension": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "cache_seq_len": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "order": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
}


@lru_cache(maxsize=1)
def profiles() -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for path in sorted((variants_dir() / "profiles").glob("*.yaml")):
        data = _load_yaml(path, "profile")
        try:
            out[data["name"]] = Profile(
                name=data["name"], description=data.get("description", ""),
                window=int(data["window"]), meta_tokens=int(data["meta_tokens"]),
                cache_seq_len=int(data["cache_seq_len"]), sizes=data["sizes"], path=path,
                bench=data.get("bench", {}), train=data.get("train", {}), eval=data.get("eval", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: bad profile: {exc}") from None
    return out


def checkpoint_path(name: str | Path) -> Path | None:
    """`name` as a Hugging Face checkpoint given as a design: a directory holding config.json,
    a .json file or a .gguf file; None when it is not a path to one."""
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.suffix.lower() in (".json", ".gguf") and path.is_file():
        return path
    return None


def checkpoint_variant(path: Path) -> Variant:
    """A checkpoint's config.json as a fixed-size design, named after its directory (with
    `-hf` appended where that is a registered name)."""
    from hymba_bench.model.hf import config_from_checkpoint

    folder = path if path.is_dir() else path.parent
    named = path.stem if path.suffix.lower() == ".gguf" else folder.resolve().name
    label = re.sub(r"[^A-Za-z0-9._+-]", "-", named).lstrip("._+-")[:97] or "hf"
    if label in _builtin_variants():  # a folder called `llama` is not the registered row
        label += "-hf"
    cfg = config_from_checkpoint(path, label)
    keys: dict[str, Any] = {k: v for k, v in cfg.to_dict().items()
                            if k in _config_keys() and k not in ("name", "description")}
    keys.update(cfg.mixer_options)  # the per-mixer blocks, as a design file gives them
    keys.update(name=label, description=cfg.description, table_label=label,
                table_section="other", fixed_size=True, in_all=False)
    return Variant(name=label, path=path if path.is_file() else path / "config.json", keys=keys)


def _variant_from_file(path: Path) -> Variant:
    if checkpoint_path(path) is not None:
        return checkpoint_variant(Path(path))
    data = _load_yaml(path, "design file")
    check_name(data.get("name"), str(path))  # it becomes folder names under the run directory
    allowed = set(META_KEYS) | _config_keys() | set(mixers.names())
    for key, value in data.items():
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RegistryError(f"{path}: {key}: unknown key{extra}")
        if key in META_TYPES and not META_TYPES[key][0](value):
            raise RegistryError(f"{path}: {key}: expected {META_TYPES[key][1]}, got {value!r}")
        if key in mixers.MIXERS and not isinstance(value, dict):
            raise RegistryError(f"{path}: {key}: expected a mapping of {key}'s options "
                                f"(e.g. {key}: {{...}}), got {value!r}")
    return Variant(name=data["name"], path=path, keys=data)


@lru_cache(maxsize=1)
def _builtin_variants() -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for path in sorted(variants_dir().glob("*.yaml")):
        variant = _variant_from_file(path)
        if variant.name in out:
            raise RegistryError(f"{path}: name: {variant.name!r} is already defined in "
                                f"{out[variant.name].path}")
        out[variant.name] = variant
    return dict(sorted(out.items(), key=lambda kv: (kv[1].keys.get("order", ORDER_DEFAULT), kv[0])))


def variants(extra_files: list[Path] | None = None) -> dict[str, Variant]:
    """Every registered variant, plus user design files (which may not reuse a name)."""
    out = dict(_builtin_variants())
    for path in extra_files or []:
        variant = _variant_from_file(Path(path))
        if variant.name in out:
            raise RegistryError(f"{path}: name: {variant.name!r} is already registered "
                                f"({out[variant.name].path.name})")
        out[variant.name] = variant
    return out


def _unknown(kind: str, name: str, valid: list[str]) -> RegistryError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return RegistryError(f"unknown {kind} {name!r}; {hint}valid: {', '.join(valid)}")


def get_profile(name: str) -> Profile:
    table = profiles()
    if name not in table:
        raise _unknown("profile", name, sorted(table))
    return table[name]


def get_variant(name: str, extra_files: list[Path] | None = None) -> Variant:
    table = variants(extra_files)
    if name not in table:
        raise _unknown("variant", name, sorted(table))
    return table[name]


def names(extra_files: list[Path] | None = None, only_all: bool = False) -> list[str]:
    """Registered names in file order; `only_all` drops those marked `in_all: false`."""
    table = variants(extra_files)
    return [n for n, v in table.items() if not (only_all and v.keys.get("in_all") is False)]


def _chain(variant: Variant, table: dict[str, Variant]) -> list[Variant]:
    chain = [variant]
    while "extends" in chain[-1].keys:
        parent = chain[-1].keys["extends"]
        if not isinstance(parent, str) or parent not in table:
            valid = ", ".join(sorted(table))
            raise RegistryError(f"{chain[-1].path}: extends: unknown variant {parent!r} "
                                f"(valid: {valid})")
        if any(v.name == parent for v in chain):
            raise RegistryError(f"{chain[-1].path}: extends: cycle through {parent!r}")
        chain.append(table[parent])
    return chain[::-1]


def resolve(name: str, profile: str = "tiny", extra_files: list[Path] | None = None,
            **overrides: Any) -> ResolvedVariant:
    """A registered name, a user design file's name, or a Hugging Face checkpoint's path (its
    directory or config.json) -> the design at `profile` (a checkpoint has a fixed size)."""
    table = variants(extra_files)
    if name not in table and (ckpt := checkpoint_path(name)) is not None:
        variant = checkpoint_variant(ckpt)
        table[variant.name] = variant
        name = variant.name
    if name not in table:
        raise _unknown("variant", name, sorted(table))
    variant = table[name]
    prof = get_profile(profile)
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for v in _chain(variant, table):
        for key, value in v.keys.items():
            if key in mixers.MIXERS and isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **value}  # a mixer's block is extended, not replaced
            merged[key] = value
            origin[key] = v.path
    merged.update(overrides)

    size = merged.get("size", "base")
    if size not in prof.sizes:
        raise RegistryError(f"{origin.get('size', variant.path)}: size: expected one of "
                            f"{sorted(prof.sizes)}, got {size!r}")
    sizes = dict(prof.sizes[size])
    # A size may carry its own window / meta-token count (the 1.5B rows use W = 1024).
    window = sizes.pop("window", prof.window)
    n_meta = sizes.pop("meta_tokens", prof.meta_tokens)
    kwargs: dict[str, Any] = {} if merged.get("fixed_size") is True else sizes
    # per-mixer blocks: the profile's, then the design's (a design overrides a profile key by key)
    blocks: dict[str, dict[str, Any]] = {}
    for source in (kwargs, merged):
        for name in mixers.names():
            block = source.pop(name, None) if source is kwargs else source.get(name)
            if isinstance(block, dict):
                blocks[name] = {**blocks.get(name, {}), **block}
            elif block is not None:
                where = origin.get(name, prof.path if source is kwargs else variant.path)
                raise RegistryError(f"{where}: {name}: expected a mapping of {name}'s options, "
                                    f"got {block!r}")
    for key in _config_keys():
        if key in merged:
            kwargs[key] = merged[key]
    if blocks:
        kwargs["mixer_options"] = blocks
    if kwargs.get("sliding_window") is True:
        kwargs["sliding_window"] = window
    if kwargs.get("meta_tokens") is True:
        kwargs["meta_tokens"] = n_meta
    if kwargs.get("sliding_window") is False:
        kwargs["sliding_window"] = None
    if kwargs.get("meta_tokens") is False:
        kwargs["meta_tokens"] = 0
    ext = merged.get("context_extension")
    if ext is not None:
        if not isinstance(ext, int) or isinstance(ext, bool) or ext < 1:
            raise RegistryError(f"{origin.get('context_extension', variant.path)}: "
                                f"context_extension: expected an integer >= 1, got {ext!r}")
        kwargs["max_seq_len"] = kwargs.get("max_seq_len", 2048) * ext
        kwargs["rope_scaling"] = ntk_scale(ext)  # the released model's rule for its 2K -> 8K
    kwargs["name"] = variant.name
    kwargs.setdefault("description", variant.description)
    try:
        config = ModelConfig(**kwargs)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        where = origin.get(key, variant.path)
        raise RegistryError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise RegistryError(f"{variant.path}: {exc}") from None
    section = merged.get("table_section", "ablation")
    if section not in SECTIONS:
        raise RegistryError(f"{origin.get('table_section', variant.path)}: table_section: expected "
                            f"one of {', '.join(SECTIONS)}, got {section!r}")
    cache_seq = int(merged.get("cache_seq_len", prof.cache_seq_len))
    window = config.sliding_window
    if window is not None and window_keys(window) >= max(cache_seq, config.max_seq_len):
        raise RegistryError(
            f"{origin.get('sliding_window', variant.path)}: sliding_window: {window} never binds "
            f"(training context {config.max_seq_len}, measured context {cache_seq}): every layer "
            "would attend globally while the table calls it sliding; drop it or make it smaller")
    info = {
        # A row label is the design's own: a user design extending `mamba` is not the paper's
        # Mamba row, so it gets its name (or its own table_label) and no paper figures.
        "table_label": variant.keys.get("table_label", variant.name),
        "table_section": section,
        "design_reason": merged.get("design_reason", ""),
        "size": size,
        "cache_seq_len": cache_seq,
        "fixed_size": merged.get("fixed_size") is True,
    }
    if checkpoint_path(variant.path) is not None:  # a checkpoint's config.json or GGUF file
        gguf = variant.path.suffix.lower() == ".gguf"
        info["checkpoint"] = str(variant.path if gguf else variant.path.parent)
    return ResolvedVariant(variant=variant, profile=prof, config=config, info=info)
