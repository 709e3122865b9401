"""Quiet by default (issue 24): one line per warning and each message once, no third-party notes or loading
bars unless --verbose (accepted before or after the subcommand), the progress bar finished before the
table, and no PresetSamplerWarning for a method that sets its own thresholds."""

import os
import re
import subprocess
import sys
import textwrap
import warnings

from stitchkit.cli import main
from stitchkit.commands.noise import hoist_verbose, one_line, one_line_warnings, verbose_log
from stitchkit.sampler import PresetSamplerWarning

EXPERIMENT = """
    name: quiet
    pair: tiny-random
    sampler: {steps: 2, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle]
    metrics: [psnr]
    methods: [large, {name: hs, switch: {kind: hybridstitch-30, thresholds: [0.5, 0.3]}}]
    allow_unprofitable: true
    output: out
"""


def test_verbose_is_accepted_after_the_subcommand():
    assert hoist_verbose(["run", "x.yaml", "--verbose"]) == ["--verbose", "run", "x.yaml"]
    assert hoist_verbose(["-v", "run", "x.yaml", "-v"]) == ["--verbose", "run", "x.yaml"]
    assert hoist_verbose(["run", "x.yaml", "--", "--verbose"]) == ["run", "x.yaml", "--", "--verbose"]
    assert hoist_verbose(["run", "x.yaml"]) == ["run", "x.yaml"]


def test_a_warning_is_one_line_without_its_source():
    line = one_line(PresetSamplerWarning("hybridstitch-30: its thresholds ..."), PresetSamplerWarning,
                    "/some/file.py", 12, "    sampler = resolve_sampler(")
    assert line == "PresetSamplerWarning: hybridstitch-30: its thresholds ...\n"


def test_the_same_warning_from_two_call_sites_prints_once_on_one_line():
    from stitchkit.cost.latency import UnprofitablePlanWarning

    before = warnings.formatwarning
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            one_line_warnings()
            warnings.warn("mask_ratios[0]: 0.3 breaks Eq. 6", UnprofitablePlanWarning)  # the run's check
            warnings.warn("mask_ratios[0]: 0.3 breaks Eq. 6", UnprofitablePlanWarning)  # the first generation
            (shown,) = caught
            line = warnings.formatwarning(shown.message, shown.category, shown.filename, shown.lineno)
    finally:
        warnings.formatwarning = before
    assert line == "UnprofitablePlanWarning: mask_ratios[0]: 0.3 breaks Eq. 6\n"


def test_run_with_explicit_thresholds_warns_nothing_and_verbose_after_the_command_works(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(EXPERIMENT))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["run", str(tmp_path / "exp.yaml"), "-q", "--verbose"]) == 0
    finally:
        verbose_log(False)  # the process-wide log level back for the other tests
    assert not [w for w in caught if issubclass(w.category, PresetSamplerWarning)]
    err = capsys.readouterr().err
    assert "stitchkit: profile of tiny-random" in err  # the verbose log (profile read or measured)


def test_the_cli_prints_no_third_party_notes_and_finishes_its_bar_before_the_table(tmp_path):
    """A fresh process, as a user runs it (the shapes pair loads a CLIP text encoder through transformers)."""
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(EXPERIMENT).replace("tiny-random", "shapes")
                                       .replace("height: 64, width: 64, max_sequence_length: 8", "height: 32, width: 32")
                                       .replace("a red circle", "a small red circle at the top left on a blue background"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "stitchkit", "run", str(tmp_path / "exp.yaml")], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    out = done.stdout
    assert "Loading weights" not in out and "[transformers]" not in out and "torchvision" not in out
    assert "| latency" not in out and "full table (latency" in out  # the terminal gets the narrow summary
    assert not re.search(r"\.py:\d+: \w*Warning", out)  # a warning is one line, without file and source line
    assert out.rindex("image/s") < out.index("| method")  # the bar ended before the table
