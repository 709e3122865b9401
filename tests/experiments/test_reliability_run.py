"""Issue 14 at run time: late failures found before any model is loaded, a NaN unit that does not end the
experiment, a damaged image regenerated, the run folder's lock, and output files' permissions."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from stitchkit import ConfigError
from stitchkit.cli import main
from stitchkit.errors import NonFiniteError
from stitchkit.experiments import runner
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.lock import lock_run_folder

EXPERIMENT = """
    name: tiny
    pair: tiny-random
    sampler: {steps: 1, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
    prompts: [a red circle, a blue square]
    seeds: [0]
    methods: [large, small]
    output: out
"""


def _config(tmp_path, text=EXPERIMENT):
    (tmp_path / "exp.yaml").write_text(textwrap.dedent(text))
    return ExperimentConfig.from_yaml(tmp_path / "exp.yaml")


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the refusal")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("pair: tiny-random", "pair: {large: /nonexistent/large, small: /nonexistent/small}",
         "pair.large: no such folder '/nonexistent/large'; give a diffusers model folder or a hub id"),
        ("pair: tiny-random", "pair: {large: /, small: /, device: cuda}",
         "pair.large: '/' is not a diffusers model folder"),
    ],
)
def test_bad_pair_refused_before_loading(tmp_path, monkeypatch, old, new, message):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    config = _config(tmp_path, EXPERIMENT.replace(old, new))
    with pytest.raises(ConfigError) as err:
        runner.run_experiment(config, progress=False)
    assert str(err.value).startswith(message)


def test_cuda_on_a_cpu_machine_refused_before_loading(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(runner, "load_pair", _no_model)
    for name in ("large", "small"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    config = _config(tmp_path, EXPERIMENT.replace(
        "pair: tiny-random", f"pair: {{large: {tmp_path / 'large'}, small: {tmp_path / 'small'}, device: cuda}}"))
    with pytest.raises(ConfigError, match=r"^pair.device: 'cuda' asked for, but this machine has no CUDA device"):
        runner.run_experiment(config, progress=False)
    from stitchkit.experiments import plan

    monkeypatch.setattr(plan, "load_pair", _no_model)
    for command in (["run", "--dry-run"], ["plan"]):  # issue 25: they used to load first ("Torch not compiled")
        assert main([*command, str(tmp_path / "exp.yaml")]) == 2
        assert capsys.readouterr().err.startswith(f"stitchkit {command[0]}: error: pair.device: 'cuda' asked for")


def test_output_under_a_file_refused_on_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    _config(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(tmp_path / "exp.yaml"), "-q", "--output", str(tmp_path / "afile" / "out")]) == 2
    assert capsys.readouterr().err == (f"stitchkit run: error: output: {tmp_path / 'afile'} is a file, not a folder; "
                                       "give a folder for the results\n")


def test_size_the_pair_cannot_make_refused_from_its_folder(tmp_path):
    from stitchkit.experiments.preflight import check_size

    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"patch_size": 2, "pos_embed_max_size": 8}))
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [4, 4, 4, 4]}))
    with pytest.raises(ConfigError, match=r"^sampler.width: 72 is not a multiple of 16"):
        check_size(str(tmp_path), 64, 72)
    with pytest.raises(ConfigError, match=r"^sampler.height: 256 is beyond the 128"):
        check_size(str(tmp_path), 256, 64)
    check_size(str(tmp_path), 128, 64)  # fits: no error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_refused_on_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    _config(tmp_path)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", str(tmp_path / "exp.yaml"), "-q", "--output", str(locked / "out")]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith(f"stitchkit run: error: output: cannot write to {locked / 'out'}") and err.count("\n") == 1


def test_nan_unit_named_others_kept_rerun_retries(tmp_path, monkeypatch):
    config = _config(tmp_path)
    real = runner._generate
    calls = []

    def nan_once(pipe, config, method, prompt, seed, **kwargs):
        calls.append((method.name, prompt))
        if method.name == "small" and prompt == "a blue square" and len(calls) > 1:
            raise NonFiniteError(0, "small")
        return real(pipe, config, method, prompt, seed, **kwargs)

    monkeypatch.setattr(runner, "_generate", nan_once)
    with pytest.raises(NonFiniteError) as err:
        runner.run_experiment(config, progress=False)
    assert str(err.value).startswith("method 'small', prompt 1, seed 0: step 0: the small model returned NaN")
    records = sorted(p.relative_to(config.output).as_posix() for p in (config.output / "records").rglob("*.json"))
    assert records == ["records/large/p0000-s0.json", "records/large/p0001-s0.json", "records/small/p0000-s0.json"]
    assert (config.output / "results.md").exists()  # the report of what finished was written
    monkeypatch.setattr(runner, "_generate", real)
    runner.run_experiment(config, progress=False)
    assert (config.output / "records" / "small" / "p0001-s0.json").exists()


def test_damaged_image_is_regenerated(tmp_path):
    config = _config(tmp_path)
    runner.run_experiment(config, progress=False)
    image = config.output / "images" / "small" / "p0001-s0.png"
    record = image.parent.parent.parent / "records" / "small" / "p0001-s0.json"
    good, stamp = image.read_bytes(), record.stat().st_mtime_ns
    image.write_bytes(good[:40])  # truncated: the record is intact, the PNG does not open
    runner.run_experiment(config, progress=False)
    assert image.read_bytes() == good  # same seed, same bits
    assert record.stat().st_mtime_ns != stamp
    # Output files have the usual permissions (mkstemp alone makes 0600).
    mask = os.umask(0)
    os.umask(mask)
    for path in (image, record, config.output / "results.md", config.output / "config.resolved.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    # trace.jsonl, streamed from the records on disk, holds every step of every record in order.
    from stitchkit.experiments.store import load_records

    expected = [{"method": m, "prompt_index": r["prompt_index"], "seed": r["seed"], **step}
                for m, recs in load_records(config).items() for r in recs for step in r["trace"]]
    lines = (config.output / "trace.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected and len(expected) == 4


def test_atomic_write_follows_the_umask(tmp_path):
    from stitchkit.experiments.store import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.txt", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


HOLD = """
import sys, time
from pathlib import Path
from stitchkit.experiments.lock import lock_run_folder
lock = lock_run_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_second_run_into_a_locked_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    config = _config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(config.output)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", str(tmp_path / "exp.yaml"), "-q"]) == 2
        err = capsys.readouterr().err
        import socket

        assert err == (f"stitchkit run: error: output: {config.output} is in use by another run (pid {holder.pid} "
                       f"on {socket.gethostname()}); wait for it to finish, or give another output folder\n")
    finally:
        holder.kill()
        holder.wait()
    # Released when its holder dies (kill included): the folder can be locked again.
    with lock_run_folder(config.output):
        pass


def test_prompt_a_metric_cannot_read_refused_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    _config(tmp_path, EXPERIMENT.replace("pair: tiny-random", "pair: shapes")
            .replace("prompts: [a red circle, a blue square]",
                     "prompts: [a small red circle at the top left on a white background, a dog]")
            .replace("seeds: [0]", "seeds: [0]\n    metrics: [psnr, caption_accuracy]"))
    assert main(["run", str(tmp_path / "exp.yaml"), "-q"]) == 2
    assert capsys.readouterr().err == (
        "stitchkit run: error: prompts[1]: caption_accuracy reads shapes captions only: cannot parse 'a dog' "
        "(expected 'a <size> <colour> <shape> at the <position> on a <colour> background'); reword the prompt, "
        "or remove caption_accuracy (metrics[1])\n")
    assert not (tmp_path / "out" / "records").exists()


def test_prompt_index_is_the_index_in_the_prompt_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    lines = ["a small red circle at the top left on a white background"] * 3 + ["a large blue square"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    config = _config(tmp_path, EXPERIMENT.replace("pair: tiny-random", "pair: shapes")
                     .replace("prompts: [a red circle, a blue square]", "prompts: {from: prompts.txt}")
                     .replace("seeds: [0]", "seeds: [0]\n    metrics: [caption_accuracy]"))
    with pytest.raises(ConfigError, match=r"^prompts\[3\]: caption_accuracy reads shapes captions only: "
                                          r"cannot parse 'a large blue square'"):
        runner.run_experiment(config, progress=False)


def test_disk_full_unit_named_others_kept_rerun_redoes_it(tmp_path, monkeypatch):
    import errno

    from stitchkit.experiments.resume import UnitsFailed
    from stitchkit.experiments.store import atomic_write

    config = _config(tmp_path)
    full = config.output / "images" / "small" / "p0001-s0.png"

    def disk_full_once(path, data):
        if path == full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        atomic_write(path, data)

    monkeypatch.setattr(runner, "atomic_write", disk_full_once)
    with pytest.raises(UnitsFailed) as err:
        runner.run_experiment(config, progress=False)
    assert str(err.value) == (f"method 'small', prompt 1, seed 0: could not write its outputs "
                              f"({os.strerror(errno.ENOSPC)}: {full}); no record written; the other units finished "
                              "and were kept; rerun to retry the failed ones")
    assert [(m, pi, seed, type(e)) for m, pi, seed, e in err.value.failures] == [("small", 1, 0, OSError)]
    records = sorted(p.relative_to(config.output).as_posix() for p in (config.output / "records").rglob("*.json"))
    assert records == ["records/large/p0000-s0.json", "records/large/p0001-s0.json", "records/small/p0000-s0.json"]
    assert not full.exists() and not list(full.parent.glob(".*.tmp"))  # no half-written file left behind
    assert "| small | 1 |" in (config.output / "results.md").read_text()  # reported from what finished
    monkeypatch.setattr(runner, "atomic_write", atomic_write)
    runner.run_experiment(config, progress=False)
    assert (config.output / "records" / "small" / "p0001-s0.json").exists() and full.exists()
    assert "| small | 2 |" in (config.output / "results.md").read_text()


def _stamps(folder):
    return {p.relative_to(folder / "records").as_posix(): p.stat().st_mtime_ns
            for p in (folder / "records").rglob("*.json")}


def test_edited_prompts_file_slips_past_claim_and_the_key_redoes_its_units(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    text = EXPERIMENT.replace("prompts: [a red circle, a blue square]", "prompts: {from: prompts.txt}")
    config = _config(tmp_path, text)
    runner.run_experiment(config, progress=False)
    before = _stamps(config.output)
    (tmp_path / "prompts.txt").write_text("a red circle\na green triangle\n")  # edited in place
    config = _config(tmp_path, text)
    runner.run_experiment(config, progress=False)  # config.resolved.yaml holds {from: prompts.txt}: not refused
    after = _stamps(config.output)
    redone = sorted(p for p in after if after[p] != before[p])
    assert redone == ["large/p0001-s0.json", "small/p0001-s0.json"]
    record = json.loads((config.output / "records" / "small" / "p0001-s0.json").read_text())
    assert record["prompt"] == "a green triangle"
    # The redone image is the one a fresh run of the edited file makes (same seed, same bits).
    fresh = _config(tmp_path, text.replace("output: out", "output: fresh"))
    runner.run_experiment(fresh, progress=False)
    for method in ("large", "small"):
        for stem in ("p0000-s0", "p0001-s0"):
            assert ((config.output / "images" / method / f"{stem}.png").read_bytes()
                    == (fresh.output / "images" / method / f"{stem}.png").read_bytes()), (method, stem)


def test_record_of_another_method_with_the_same_name_is_stale(tmp_path):
    from stitchkit.experiments.reports import write_report

    text = EXPERIMENT.replace("steps: 1", "steps: 4").replace(
        "methods: [large, small]", "methods: [large, {name: fast, switch: {kind: t-stitch, small_fraction: 0.25}}]")
    config = _config(tmp_path, text)
    runner.run_experiment(config, progress=False)
    (config.output / "config.resolved.yaml").unlink()  # what claim compares against is gone
    other = _config(tmp_path, text.replace("small_fraction: 0.25", "small_fraction: 0.75"))
    with pytest.warns(UserWarning, match=r"^2 record\(s\) in .* were written for another configuration \(first: "
                                         r"method 'fast', prompt 0, seed 0\): not counted"):
        write_report(other)
    assert not any(line.startswith("| fast |") for line in (other.output / "results.md").read_text().splitlines())
    before = _stamps(config.output)
    runner.run_experiment(other, progress=False)
    after = _stamps(config.output)
    assert sorted(p for p in after if after[p] != before[p]) == ["fast/p0000-s0.json", "fast/p0001-s0.json"]
    assert "| fast | 2 |" in (other.output / "results.md").read_text()
    fresh = _config(tmp_path, text.replace("small_fraction: 0.25", "small_fraction: 0.75")
                    .replace("output: out", "output: fresh"))
    runner.run_experiment(fresh, progress=False)
    for stem in ("p0000-s0", "p0001-s0"):
        stages = [[s["stage"] for s in json.loads((f / "records" / "fast" / f"{stem}.json").read_text())["trace"]]
                  for f in (other.output, fresh.output)]
        assert stages[0] == stages[1] and stages[0].count(0) == 3  # 0.75 of 4 steps in the small stage
        assert ((other.output / "images" / "fast" / f"{stem}.png").read_bytes()
                == (fresh.output / "images" / "fast" / f"{stem}.png").read_bytes())


# Issue 25: the last late failures. ---------------------------------------------------------------------------

SHAPES = EXPERIMENT.replace("pair: tiny-random", "pair: shapes").replace("height: 64, width: 64", "height: 32, width: 32")


@pytest.mark.parametrize("side, message", [
    ("64", "sampler.height: 64 is beyond the 32 the large model's position embedding covers (pos_embed_max_size × "
           "patch × VAE factor); use at most 32"),
    ("100000000", "sampler.height: 100000000 is beyond the 32"),
    ("33", "sampler.height: 33 is not a multiple of 2 (VAE factor 1 × patch 2); use a multiple of 2"),
])
def test_a_size_the_shapes_pair_cannot_make_names_sampler_height(tmp_path, capsys, side, message):
    """Before: diffusers' "Height (32) cannot be greater than `pos_embed_max_size`" traceback, or `height:`."""
    _config(tmp_path, SHAPES.replace("height: 32", f"height: {side}"))
    assert main(["run", str(tmp_path / "exp.yaml"), "-q", "--dry-run"]) == 2
    err = capsys.readouterr().err  # after the loaders' own progress bars and notices
    assert err.rstrip("\n").splitlines()[-1].startswith(f"stitchkit run: error: {message}")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_size_beyond_the_small_models_position_embedding_is_refused_by_the_pipeline(tiny_pair):
    """A small model with a smaller pos_embed_max_size used to fail inside diffusers at its first step."""
    from stitchkit import StitchPipeline
    from stitchkit.families.sd3.tiny_random import tiny_transformer

    large, small = tiny_pair
    cropped = tiny_transformer(num_layers=1, heads=2, seed=3, sample_size=2)  # pos_embed_max_size 4: 64 px
    pipe = StitchPipeline.from_pipelines(large=large, small=cropped)
    args = dict(prompt="a cat", num_inference_steps=1, max_sequence_length=8, output_type="latent", switch="small")
    with pytest.raises(ConfigError, match=r"^height: 128 is beyond the 64 the small model's position embedding "
                                          r"covers \(pos_embed_max_size × patch × VAE factor\); use at most 64$"):
        pipe(**args, height=128, width=64)
    with pytest.raises(ConfigError, match=r"^width: 72 is not a multiple of 16 \(VAE factor 8 × patch 2\)"):
        pipe(**args, height=64, width=72)
    pipe(**args, height=64, width=64)  # within both: runs


def test_a_small_model_of_another_kind_refused_at_pair_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_pair", _no_model)
    for name, kind in (("large", "SD3Transformer2DModel"), ("small", "WanTransformer3DModel")):
        (tmp_path / name / "transformer").mkdir(parents=True)
        (tmp_path / name / "model_index.json").write_text("{}")
        (tmp_path / name / "transformer" / "config.json").write_text(json.dumps({"_class_name": kind}))
    _config(tmp_path, EXPERIMENT.replace(
        "pair: tiny-random", f"pair: {{large: {tmp_path / 'large'}, small: {tmp_path / 'small'}}}"))
    for command in (["run"], ["run", "--dry-run"], ["plan"]):
        assert main([*command, str(tmp_path / "exp.yaml")]) == 2
        assert capsys.readouterr().err == (
            f"stitchkit {command[0]}: error: pair.small: holds a WanTransformer3DModel, but the large model is a "
            "SD3Transformer2DModel; give a small SD3Transformer2DModel (a pipeline folder of the large one's kind, "
            "or its transformer)\n")


def test_dry_run_makes_runs_checks_before_loading(tmp_path, monkeypatch, capsys):
    """--dry-run used to load the models first: diffusers' hub OSError for a missing folder, "Torch not
    compiled with CUDA enabled", and a prompt the metric cannot read passed the dry run that `run` refused."""
    from stitchkit.experiments import plan

    monkeypatch.setattr(plan, "load_pair", _no_model)
    _config(tmp_path, EXPERIMENT.replace("pair: tiny-random", "pair: {large: /nonexistent/l, small: /nonexistent/s}"))
    assert main(["run", str(tmp_path / "exp.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("stitchkit run: error: pair.large: no such folder '/nonexistent/l'")
    _config(tmp_path, SHAPES.replace("prompts: [a red circle, a blue square]", "prompts: [a dog]")
            .replace("seeds: [0]", "seeds: [0]\n    metrics: [caption_accuracy]"))
    assert main(["run", str(tmp_path / "exp.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        "stitchkit run: error: prompts[0]: caption_accuracy reads shapes captions only: cannot parse 'a dog'")
    assert not (tmp_path / "out").exists()  # a dry run creates nothing


def test_a_truncated_record_is_reported_unreadable_not_stale(tmp_path):
    from stitchkit.experiments.reports import write_report

    config = _config(tmp_path)
    runner.run_experiment(config, progress=False)
    record = config.output / "records" / "small" / "p0001-s0.json"
    record.write_bytes(record.read_bytes()[:100])  # cut mid-way, as a full disk or a kill leaves it
    with pytest.warns(UserWarning) as caught:
        write_report(config)
    assert [str(w.message) for w in caught] == [
        f"1 record(s) in {config.output} cannot be read (truncated or damaged JSON) (first: method 'small', prompt 1, "
        "seed 0): not counted; `stitchkit run` remakes them"]
    runner.run_experiment(config, progress=False)  # and the rerun remakes it
    assert json.loads(record.read_text())["method"] == "small"


def test_a_pair_that_cannot_stitch_is_named_at_pair_small(tmp_path, tiny_pair):
    """A registered pair whose small transformer has another patch size: the family's pair check, at the
    experiment's field."""
    from stitchkit import hookimpl
    from stitchkit.families.sd3.tiny_random import tiny_transformer
    from stitchkit.experiments.pair_setup import load_pair
    from stitchkit.registry import get_registry

    class OddPair:
        @hookimpl
        def register_pairs(self, register):
            other = tiny_transformer(num_layers=1, heads=2, seed=5)
            other.register_to_config(patch_size=4)
            register("odd-pair", lambda: (tiny_pair[0], other))

    registry = get_registry(extra=[OddPair()])
    config = ExperimentConfig.from_dict({"pair": "odd-pair", "prompts": ["a cat"], "methods": ["large"]},
                                        base=tmp_path, registry=registry)
    with pytest.raises(ConfigError, match=r"^pair\.small\.config\.patch_size: is 4, the large model's is 2; "
                                          r"the two must match$"):
        load_pair(config)


def test_profile_of_a_size_the_pair_cannot_make_names_the_option(capsys):
    assert main(["profile", "--pair", "shapes", "--height", "64", "--width", "32"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip("\n").splitlines()[-1] == (
        "stitchkit profile: error: --height: 64 is beyond the 32 the large model's position embedding covers "
        "(pos_embed_max_size × patch × VAE factor); use at most 32")
