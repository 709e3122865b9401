"""``compile:`` in an experiment's YAML: read into ExperimentConfig.compile and applied when the pair loads."""

import pytest

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.pair_setup import load_pair

BASE = {"pair": "tiny-random", "prompts": ["a red circle"], "methods": ["large"]}


def test_compile_true_false_or_options():
    assert ExperimentConfig.from_dict(BASE).compile is None
    assert ExperimentConfig.from_dict({**BASE, "compile": False}).compile is None
    assert ExperimentConfig.from_dict({**BASE, "compile": True}).compile == {}
    options = {"mode": "max-autotune-no-cudagraphs", "dynamic": False}
    assert ExperimentConfig.from_dict({**BASE, "compile": options}).compile == options


@pytest.mark.parametrize("value, message", [
    ("yes", r"compile: expected a mapping, got str; true, false or \{mode"),
    ({"fulgraph": True}, r"compile\.fulgraph: is not a torch.compile option stitchkit passes; allowed: fullgraph"),
])
def test_bad_compile_values_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({**BASE, "compile": value})


def test_the_loaded_pair_is_compiled_only_when_asked():
    def compiled(pipe):
        return sum(getattr(m, "_compiled_call_impl", None) is not None
                   for model in (pipe.transformer, pipe.small_transformer) for m in model.modules())

    assert compiled(load_pair(ExperimentConfig.from_dict(BASE))) == 0
    pipe = load_pair(ExperimentConfig.from_dict({**BASE, "compile": {"backend": "eager"}}))
    assert compiled(pipe) == len(pipe.transformer.transformer_blocks) + len(pipe.small_transformer.transformer_blocks)
