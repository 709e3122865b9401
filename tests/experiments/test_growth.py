"""Runs that grow (issue 24): a finished run folder takes new methods, prompts and seeds and generates only
the missing units; a change to a finished method is refused naming the field; ``--dry-run`` refuses what
``run`` refuses and counts exactly the units ``run`` then generates (counted here from the records written)."""

import textwrap
from pathlib import Path

import pytest
import yaml

from stitchkit.cli import main
from stitchkit.experiments.growth import growth_refusal

EXPERIMENT = """
    name: grow
    pair: tiny-random
    sampler: {steps: 2, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle, a blue square]
    seeds: [0]
    metrics: [psnr]
    methods: [large, t-stitch]
    output: out
"""


def _stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "records").rglob("*.json")}


def _generated(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {name for name, stamp in after.items() if before.get(name) != stamp}


def _dry_run_count(exp: Path, capsys) -> int:
    capsys.readouterr()
    assert main(["run", str(exp), "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    if "nothing to generate" in first:
        return 0
    return int(first.split(" units: ")[1].split(" to generate")[0])


def _run_once(tmp_path_factory, name: str) -> Path:
    folder = tmp_path_factory.mktemp(name)
    (folder / "exp.yaml").write_text(textwrap.dedent(EXPERIMENT))
    assert main(["run", str(folder / "exp.yaml"), "-q"]) == 0
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run that the tests below grow, in order."""
    return _run_once(tmp_path_factory, "grow")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A finished run that no test changes."""
    return _run_once(tmp_path_factory, "kept")


def _variant(folder: Path, name: str, *replacements: tuple[str, str]) -> Path:
    text = textwrap.dedent(EXPERIMENT)
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = folder / name
    path.write_text(text)
    return path


def test_a_finished_rerun_has_nothing_to_generate(finished, capsys):
    assert _dry_run_count(finished / "exp.yaml", capsys) == 0
    before = _stamps(finished / "out")
    assert main(["run", str(finished / "exp.yaml"), "-q"]) == 0
    assert "nothing to generate: all 4 units are done in" in capsys.readouterr().err
    assert _stamps(finished / "out") == before


def test_adding_a_method_generates_only_its_units(finished, capsys):
    grown = _variant(finished, "more.yaml", ("methods: [large, t-stitch]", "methods: [large, small, t-stitch]"))
    planned = _dry_run_count(grown, capsys)
    before = _stamps(finished / "out")
    assert main(["run", str(grown), "-q"]) == 0
    made = _generated(before, _stamps(finished / "out"))
    assert made == {"records/small/p0000-s0.json", "records/small/p0001-s0.json"}
    assert planned == len(made) == 2
    resolved = yaml.safe_load((finished / "out" / "config.resolved.yaml").read_text())
    assert [m["name"] for m in resolved["methods"]] == ["large", "small", "t-stitch"]
    table = (finished / "out" / "results.md").read_text()
    assert "| small |" in table and "| t-stitch |" in table


def test_adding_a_prompt_and_a_seed_generates_only_the_new_units(finished, capsys):
    grown = _variant(finished, "wider.yaml", ("methods: [large, t-stitch]", "methods: [large, small, t-stitch]"),
                     ("prompts: [a red circle, a blue square]", "prompts: [a red circle, a blue square, a green dot]"),
                     ("seeds: [0]", "seeds: [0, 1]"))
    planned = _dry_run_count(grown, capsys)
    before = _stamps(finished / "out")
    assert main(["run", str(grown), "-q"]) == 0
    made = _generated(before, _stamps(finished / "out"))
    # 3 methods × (3 prompts × 2 seeds) = 18 units, of which the 6 of prompts 0-1 at seed 0 were done.
    assert planned == len(made) == 12
    assert not any(name.endswith(("p0000-s0.json", "p0001-s0.json")) for name in made)


@pytest.mark.parametrize("replacement, field", [
    (("methods: [large, t-stitch]", "methods: [large, {name: t-stitch, switch: {kind: t-stitch, small_fraction: 0.5}}]"),
     "methods[1].switch.small_fraction"),
    (("prompts: [a red circle, a blue square]", "prompts: [a red circle, a green square]"), "prompts[1]"),
    (("methods: [large, t-stitch]", "methods: [large]"), "methods"),
    (("steps: 2", "steps: 3"), "sampler.steps"),
])
def test_a_change_to_what_ran_is_refused_alike_by_run_and_dry_run(kept, capsys, replacement, field):
    changed = _variant(kept, "changed.yaml", replacement)
    before = _stamps(kept / "out")
    assert main(["run", str(changed), "--dry-run"]) == 2
    dry = capsys.readouterr().err.strip()
    assert main(["run", str(changed), "-q"]) == 2
    real = capsys.readouterr().err.strip()
    assert dry == real and "\n" not in real
    assert real.startswith(f"stitchkit run: error: {field}: ")
    assert _stamps(kept / "out") == before


def test_dry_run_counts_units_of_a_prompts_file_edited_in_place(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(EXPERIMENT).replace("prompts: [a red circle, a blue square]",
                                                       "prompts: {from: prompts.txt}").replace("[large, t-stitch]",
                                                                                               "[large]"))
    assert main(["run", str(exp), "-q"]) == 0
    (tmp_path / "prompts.txt").write_text("a red circle\na green square\n")  # the key sees it, the file not
    planned = _dry_run_count(exp, capsys)
    before = _stamps(tmp_path / "out")
    assert main(["run", str(exp), "-q"]) == 0
    assert planned == len(_generated(before, _stamps(tmp_path / "out"))) == 1


def test_growth_rules_on_resolved_configs():
    base = {"name": "x", "sampler": {"steps": 2}, "seeds": [0],
            "prompts": {"from": "p.txt", "sample": 8, "seed": 0},
            "methods": [{"name": "a", "switch": {"kind": "large"}},
                        {"name": "s", "switch": {"kind": "hybridstitch"}, "grid": {"mask_ratios": [[0.2]]}}]}
    folder = Path("runs/x")
    grown = {**base, "seeds": [1, 0], "prompts": {"from": "p.txt", "sample": 16, "seed": 0},
             "methods": [{"name": "s", "switch": {"kind": "hybridstitch"}, "grid": {"mask_ratios": [[0.3]]}},
                         *base["methods"]]}
    assert growth_refusal(base, grown, folder) is None
    assert growth_refusal(base, {**base, "prompts": {"from": "p.txt"}}, folder) is None  # the whole file
    assert growth_refusal(base, {**base, "prompts": {"from": "p.txt", "sample": 4, "seed": 0}}, folder).path \
        == "prompts.sample"
    assert growth_refusal(base, {**base, "prompts": {"from": "q.txt", "sample": 8, "seed": 0}}, folder).path \
        == "prompts.from"
    assert growth_refusal(base, {**base, "seeds": [1]}, folder).path == "seeds"
    swept = {**base, "methods": [base["methods"][0], {**base["methods"][1], "grid": {"mask_ratios": [[0.3]]}}]}
    err = growth_refusal(base, swept, folder)
    assert err.path == "methods" and "'s' ran in" in err.problem
