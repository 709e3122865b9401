"""Plans are checked against the latency model (Eq. 7-8) before anything runs."""

import warnings

import pytest

from stitchkit import ConfigError
from stitchkit.cost.latency import Costs, UnprofitablePlanWarning
from stitchkit.cost.validation import check_switch_policy

ARGS = dict(prompt="a red circle", height=64, width=64, num_inference_steps=4, max_sequence_length=8,
            output_type="latent")
GREEDY = {"kind": "hybridstitch", "thresholds": [0.5, 0.3], "mask_ratios": [0.99]}


class _Policy:
    def __init__(self, *ratios):
        self.mask_ratios = ratios


def test_eq7_bound_is_computed_from_the_costs():
    costs = Costs(large_ms=10.0, small_ms=2.5)
    with pytest.raises(ConfigError, match=r"^switch.mask_ratios\[0\]: 0.8 breaks Eq. 7; it must be below "
                                          r"1 − Ls/Ll = 0.75 \(Ls/Ll from an estimate"):
        check_switch_policy(_Policy(0.8), costs)
    assert check_switch_policy(_Policy(0.7), costs) == ()
    with pytest.raises(ConfigError, match=r"mask_ratios\[1\]: 0.5 breaks Eq. 8"):
        check_switch_policy(_Policy(0.4, 0.5), costs)


def test_profiled_eq6_breach_warns_but_does_not_refuse():
    costs = Costs(large_ms=10.0, small_ms=2.5, masked_ms=[(0.5, 9.0)], source="profile")

    with pytest.warns(UnprofitablePlanWarning, match="Eq. 6 with the profiled masked cost"):
        problems = check_switch_policy(_Policy(0.5), costs)
    assert len(problems) == 1


def test_pipeline_refuses_an_unprofitable_mask_before_running(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^switch.mask_ratios\[0\]: 0.99 breaks Eq. 7"):
        stitch_pipe(**ARGS, switch=GREEDY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = stitch_pipe(**ARGS, switch=GREEDY, allow_unprofitable=True)
    assert len(out.trace) == 4
    assert any(issubclass(w.category, UnprofitablePlanWarning) for w in caught)


def test_run_refuses_with_the_method_path(tmp_path, capsys):
    from stitchkit.cli import main

    exp = tmp_path / "e.yaml"
    exp.write_text("sampler: {steps: 3, height: 64, width: 64, max_sequence_length: 8}\nprompts: [x]\n"
                   "methods:\n  - large\n  - {name: greedy, switch: {kind: hybridstitch, thresholds: [0.5, 0.3],"
                   " mask_ratios: [0.99]}}\noutput: out\n")
    assert main(["run", str(exp), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("stitchkit run: error: methods[1].switch.mask_ratios[0]: 0.99 breaks Eq. 7")
    assert not (tmp_path / "out" / "records").exists()


def test_full_large_context_is_priced_at_every_token():
    # Eq. 6 with M = 1: a hybrid step costs Ll + Ls = 10 + 2.5 = 12.5 > Ll = 10, i.e. Eq. 7 reads
    # 1 < 1 − 2.5/10 = 0.75, false: refused although 0.3 < 0.75 passes for a context that masks.
    costs = Costs(large_ms=10.0, small_ms=2.5)
    assert check_switch_policy(_Policy(0.3), costs) == ()
    with pytest.raises(ConfigError) as err:
        check_switch_policy(_Policy(0.3), costs, computes_all_tokens=True)
    assert str(err.value) == (
        "switch.mask_ratios[0]: 0.3 is priced as 1 because the context computes every token, and 1 breaks "
        "Eq. 7; it must be below 1 − Ls/Ll = 0.75 (a hybrid step costs Ll + Ls = 12.5 against Ll = 10); "
        "set allow_unprofitable for ablations")
    with pytest.warns(UnprofitablePlanWarning, match="computes every token"):
        problems = check_switch_policy(_Policy(0.3), costs, computes_all_tokens=True, allow_unprofitable=True)
    assert len(problems) == 1
    # issue 24: allowed already, so the warning does not advise setting allow_unprofitable
    assert "set allow_unprofitable" not in problems[0] and problems[0].endswith("(allowed: allow_unprofitable)")


def test_pipeline_prices_the_full_large_preset_and_an_explicit_context(stitch_pipe):
    with pytest.raises(ConfigError, match=r"^switch.mask_ratios\[0\]: 0.3 is priced as 1"):
        stitch_pipe(**ARGS, switch="fulllarge-30")
    with pytest.raises(ConfigError, match="is priced as 1"):
        stitch_pipe(**ARGS, switch="hybridstitch-30", context="full-large")
    # the same mask with the K/V cache passes; the preset's context can be overridden
    assert stitch_pipe.check_plan("fulllarge-30", context="kv-cache", height=64, width=64, text_tokens=8,
                                  guided=False) == ()
    with pytest.warns(UnprofitablePlanWarning, match="computes every token"):
        out = stitch_pipe(**ARGS, switch="fulllarge-30", allow_unprofitable=True)
    assert len(out.trace) == 4
