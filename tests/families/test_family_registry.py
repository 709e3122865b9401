"""Model families and pairs through the plugin registry: lookups, an outside family added like a policy,
duplicate names refused, and no file outside a family's own folder naming SD3 or Wan."""

import ast
import re
from pathlib import Path

import pytest
import torch

import stitchkit
from stitchkit import ConfigError, StitchPipeline
from stitchkit.families import Family
from stitchkit.registry import get_registry

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_families_and_pairs_are_registered():
    registry = get_registry()
    assert {"sd3", "shapes", "wan"} <= set(registry.families)
    assert {"tiny-random", "bench-random", "sd3-paper-random", "shapes", "wan-tiny-random"} <= set(registry.pairs)
    assert registry.pairs["wan-tiny-random"].origin == "stitchkit (built-in)"
    import stitchkit.pipeline.pairs

    assert stitchkit.pipeline.pairs.BUILTIN_PAIRS[0] == "tiny-random"  # registration order, as the config errors list them


def test_families_are_picked_from_pipeline_and_transformer_classes(tiny_pair):
    registry = get_registry()
    large, small = tiny_pair
    assert registry.family_for_pipeline(large).name == "sd3"
    assert registry.family_for_transformer(small).name == "sd3"
    with pytest.raises(ConfigError, match=r"^large: is a str, which no model family runs; pass a pipeline of one "
                                          r"of: .*sd3.*wan"):
        StitchPipeline.from_pipelines(large="not a pipeline", small=small)
    with pytest.raises(ConfigError, match=r"^transformer: is a Linear, which no model family masks"):
        registry.family_for_transformer(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"^pair: unknown built-in pair 'nope'; known: tiny-random"):
        registry.pair("nope")


class _ToyPipeline:
    """An outside package's pipeline class (here it wraps a tiny SD3 pipeline to have something to run)."""

    def __init__(self, inner):
        self.inner = inner


class _ToyPlugin:
    """An outside family, registered as a plugin object exactly like an outside policy."""

    def __init__(self):
        self.masked_calls = 0

    def family(self) -> Family:
        from stitchkit.families.sd3 import FAMILY as sd3
        from stitchkit.families.sd3.adapter import SD3Adapter

        class ToyAdapter(SD3Adapter):
            family = "toy"

            def __init__(self, toy):
                super().__init__(toy.inner)

        def runner(transformer):
            self.masked_calls += 1
            return sd3.masked_runner(transformer)

        return Family(name="toy", accepts_pipeline=lambda obj: isinstance(obj, _ToyPipeline),
                      accepts_transformer=lambda obj: False, adapter=ToyAdapter, masked_runner=runner,
                      forward=sd3.forward, check_pair=sd3.check_pair, flops=sd3.flops)

    @stitchkit.hookimpl
    def register_model_families(self, register):
        register(self.family())

    @stitchkit.hookimpl
    def register_pairs(self, register):
        from stitchkit.families.sd3.tiny_random import build_tiny_random_pair

        register("toy-pair", lambda: (_ToyPipeline(build_tiny_random_pair()[0]), build_tiny_random_pair()[1]),
                 description="a toy pair")


def test_an_outside_family_plugs_in_like_a_policy(tiny_pair):
    plugin = _ToyPlugin()
    registry = get_registry(extra=[plugin], entry_points=False)
    assert registry.families["toy"].name == "toy" and "toy-pair" in registry.pairs
    large, small = tiny_pair
    pipe = StitchPipeline.from_pipelines(large=_ToyPipeline(large), small=small, registry=registry)
    assert pipe.family.name == "toy" and plugin.masked_calls == 1
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=3, max_sequence_length=8,
                output_type="latent")
    out = pipe(**args, generator=torch.Generator().manual_seed(0), switch="hybridstitch-30",
               allow_unprofitable=True)
    expected = StitchPipeline.from_pipelines(large=large, small=small)(
        **args, generator=torch.Generator().manual_seed(0), switch="hybridstitch-30", allow_unprofitable=True)
    assert torch.equal(out.images, expected.images)
    from stitchkit.pipeline.pairs import load_pair_pipeline

    by_name = load_pair_pipeline("toy-pair", registry=registry)
    assert by_name.family.name == "toy" and by_name.pair_id == "toy-pair"


def test_a_family_or_pair_registered_twice_names_both_origins():
    class Again:
        @stitchkit.hookimpl
        def register_pairs(self, register):
            register("wan-tiny-random", lambda: None)

    with pytest.raises(ConfigError, match=r"^pair 'wan-tiny-random': registered twice, by stitchkit \(built-in\) "
                                          r"and by .*Again"):
        get_registry(extra=[Again()], entry_points=False)


# -- nothing outside a family's own files names SD3 or Wan ---------------------------------------------

#: The families' own files; and the shapes pair's trainer and its CLI, which are the shapes family's.
FAMILY_OWN = ("stitchkit/families/", "stitchkit/shapes/", "stitchkit/commands/train_pair.py")
NAMES = re.compile(r"sd3|stablediffusion3|(?:^|[^a-z])wan(?:[^a-z]|$)|wan(?:pipeline|transformer|attn)",
                   re.IGNORECASE)


def _code_words(source: str) -> list[tuple[int, str]]:
    """Identifiers, imported module names and string constants, without docstrings and comments (prose may
    cite the paper's SD3 measurements; code may not depend on a family)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.alias):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.append((node.lineno, node.module))
        elif isinstance(node, ast.arg):
            words.append((node.lineno, node.arg))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
    return words


def test_the_check_finds_a_family_name_in_code():
    assert _code_words("from x.sd3 import y\n")[0][1] == "x.sd3"
    assert any(NAMES.search(w) for _, w in _code_words("p = WanPipeline()\n"))
    assert any(NAMES.search(w) for _, w in _code_words("k = 'stitchkit.families.wan'\n"))
    assert not any(NAMES.search(w) for _, w in _code_words('"""Cites SD3 in prose."""\nwant = 1  # wan\n'))


def test_no_file_outside_a_family_names_one():
    offenders = []
    for path in sorted([*ROOT.glob("stitchkit/**/*.py"), *ROOT.glob("policies/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(FAMILY_OWN):
            continue
        offenders += [f"{rel}:{line}: {word!r}" for line, word in _code_words(path.read_text())
                      if NAMES.search(word)]
    assert not offenders, "family names outside the families' folders:\n" + "\n".join(offenders)


def test_the_readme_family_example_registers_a_family_and_a_pair(capsys):
    import types

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a model family"):text.index("## Memory")]
    source = section[section.index("```python\n") + len("```python\n"):section.index("```\n\nDeclare")]
    module = types.ModuleType("my_family")
    exec(compile(source, "README.md", "exec"), module.__dict__)
    registry = get_registry(extra=[module], entry_points=False)
    assert registry.families["mine"].pipeline_class_names == ("MyPipeline",)
    assert registry.pairs["my-pair"].description == "my large + small"
    assert registry.family_origin("mine") == "my_family"
    from stitchkit.cli import main

    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "model families:\n  sd3: " in listing and "  wan-tiny-random: tiny random Wan 2.1" in listing
