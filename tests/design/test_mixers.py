"""The mixer registry and the per-mixer option blocks: read by name, validated in one line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hymba_bench.design import mixers
from hymba_bench.design.config import ConfigError, ModelConfig
from hymba_bench.design.registry import RegistryError, resolve


def test_the_registry_imports_no_torch() -> None:
    code = ("import sys; from hymba_bench.design import mixers; from hymba_bench.design.registry "
            "import variants; variants(); print(len(mixers.names()), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(mixers.MIXERS)), "False"]


@pytest.mark.parametrize("name", mixers.names())
def test_every_mixer_keeps_the_contract(name: str) -> None:
    cls = mixers.mixer_class(name)
    assert isinstance(cls.has_attention, bool)
    options = getattr(cls, "Options", mixers.NoOptions)
    assert dataclasses.is_dataclass(options)
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(options)), "every option needs a default"
    cfg = ModelConfig(layout=[name])
    shapes = cls.state_shapes(cfg, cfg.layers[0], 2)
    assert all(isinstance(n, str) and s[0] == 2 for n, s in shapes.items())
    assert cls.state_elements(cfg, cfg.layers[0]) >= 0


def test_unknown_mixers_and_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"layout: unknown mixer 'mamab' \(did you mean 'mamba'"):
        ModelConfig(layout=["mamab"])
    with pytest.raises(ConfigError, match="not a registered mixer"):
        ModelConfig(mixer_options={"transformer": {}})
    with pytest.raises(ConfigError, match=r"hybrid: sssm: unknown option .did you mean 'ssm'"):
        ModelConfig(layout=["hybrid"], mixer_options={"hybrid": {"sssm": "mamba"}})
    with pytest.raises(ConfigError, match="hybrid: ssm: attention cannot be the SSM branch"):
        ModelConfig(layout=["hybrid"], mixer_options={"hybrid": {"ssm": "attention"}})
    with pytest.raises(ConfigError, match=r"hyena: x: unknown option; hyena has no options"):
        ModelConfig(mixer_options={"hyena": {"x": 1}})
    with pytest.raises(ConfigError, match=r"attention: x: unknown option; valid: output_gate"):
        ModelConfig(mixer_options={"attention": {"x": 1}})


def test_every_config_field_is_checked_by_its_annotation() -> None:
    """A field the checker cannot type refuses to be declared unchecked, so none slips through."""
    @dataclasses.dataclass
    class Sloppy:
        sizes: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="needs metadata"):
        mixers.check_fields(Sloppy(), ConfigError)
    for key, bad in (("moe_every", 0), ("rope_theta", float("nan")), ("ssm_norms", 1),
                     ("hyena_modes", True), ("name", 3), ("ffn", "sparse"), ("meta_tokens", -1)):
        with pytest.raises(ConfigError, match=f"^{key}: expected"):
            ModelConfig(**{key: bad})


def test_a_design_file_gives_a_mixer_block(tmp_path: Path) -> None:
    design = tmp_path / "mine.yaml"
    design.write_text("name: mine\nextends: b-parallel\nhybrid: {ssm: mamba}\n")
    cfg = resolve("mine", "tiny", [design]).config
    assert cfg.options("hybrid").ssm == "mamba"
    assert cfg.mixer_options["hybrid"] == {"ssm": "mamba"}  # beside the profile's blocks
    assert ModelConfig(**cfg.to_dict()).options("hybrid") == cfg.options("hybrid")
    design.write_text("name: mine\nextends: b-parallel\nhybrid: mamba2-please\n")
    with pytest.raises(RegistryError, match=r"mine.yaml: hybrid: expected a mapping"):
        resolve("mine", "tiny", [design])
    design.write_text("name: mine\nextends: b-parallel\nhybrid: {ssm: hyena}\n")
    with pytest.raises(RegistryError, match=r"mine.yaml: hybrid: ssm: hyena cannot be"):
        resolve("mine", "tiny", [design])
