"""Issue 25: a broken outside plugin is one line naming its entry point, distribution and how to skip it; the
other plugins and the commands that do not need it keep working; STITCHKIT_PLUGINS says what it filters by.

The outside packages are dist-info folders written into a temporary folder put on sys.path (importlib.metadata
finds them there as it finds installed ones): one whose entry point imports a module that does not exist, one
whose module registers a switch policy."""

import logging
import sys

import pytest

from stitchkit import ConfigError
from stitchkit import plugin_loading
from stitchkit.registry import get_registry

GOOD_MODULE = '''
from stitchkit import hookimpl
from stitchkit.protocols import Decision


class EveryStepLarge:
    change_measure = "x0"
    may_mask = False

    def reset(self, num_steps):
        pass

    def decide(self, state):
        return Decision(stage=0, large=True, small=False)


@hookimpl
def register_switch_policies(register):
    register("every-step-large", EveryStepLarge)
'''


def _dist(site, name, entry_point, target):
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[stitchkit]\n{entry_point} = {target}\n")


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """Two outside packages: ``stitchkit-broken`` (entry point ``broken``) and ``stitchkit-good`` (``good``)."""
    _dist(tmp_path, "stitchkit-broken", "broken", "stitchkit_no_such_module_i25")
    _dist(tmp_path, "stitchkit-good", "good", "stitchkit_good_i25")
    (tmp_path / "stitchkit_good_i25.py").write_text(GOOD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugin_loading, "_REPORTED", set())
    monkeypatch.setattr(plugin_loading, "FAILED", {})
    monkeypatch.delenv("STITCHKIT_PLUGINS", raising=False)
    yield tmp_path
    sys.modules.pop("stitchkit_good_i25", None)


def test_a_broken_plugin_is_one_line_and_the_others_load(outside, caplog):
    with caplog.at_level(logging.WARNING, logger="stitchkit.plugin_loading"):
        registry = get_registry()
    assert "every-step-large" in registry.names("switch")  # the good one, and the built-ins, still load
    assert "large" in registry.names("switch")
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("plugin entry point 'broken' (stitchkit_no_such_module_i25) of stitchkit-broken 0.1 "
                           "failed to load (ModuleNotFoundError: No module named 'stitchkit_no_such_module_i25'); "
                           "skipped, the other plugins are loaded; to skip it without this warning set "
                           "STITCHKIT_PLUGINS=good (the entry points to load), or uninstall stitchkit-broken")
    assert "\n" not in line
    with caplog.at_level(logging.WARNING, logger="stitchkit.plugin_loading"):
        get_registry()
    assert len(caplog.records) == 1  # once per process, not once per registry


def test_commands_keep_working_beside_a_broken_plugin(outside):
    """As a user runs it: a fresh process, logging unconfigured; one line on stderr, exit 0."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(outside), *sys.path]), "OMP_NUM_THREADS": "1"}
    env.pop("STITCHKIT_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "stitchkit", "plugins"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "every-step-large" in done.stdout
    assert done.stderr.startswith("plugin entry point 'broken' (stitchkit_no_such_module_i25) of stitchkit-broken")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_policy_of_the_broken_plugin_names_the_failure(outside):
    with pytest.raises(ConfigError, match=r"^switch: unknown switch policy 'from-broken'; known: .*; entry point "
                                          r"'broken' failed to load \(ModuleNotFoundError"):
        get_registry().create("switch", "from-broken")


def test_the_filter_names_entry_points_not_packages(outside, monkeypatch, caplog):
    monkeypatch.setenv("STITCHKIT_PLUGINS", "stitchkit-good")
    with caplog.at_level(logging.WARNING, logger="stitchkit.plugin_loading"):
        registry = get_registry()
    [line] = [r.getMessage() for r in caplog.records]
    assert line == ("STITCHKIT_PLUGINS: 'stitchkit-good' matches no installed plugin's entry point, so it loads "
                    "nothing; STITCHKIT_PLUGINS filters by entry-point name, not package name ('stitchkit-good' is "
                    "a distribution; its entry points: good)")
    with pytest.raises(ConfigError, match=r"STITCHKIT_PLUGINS='stitchkit-good' loads only the entry points it names$"):
        registry.create("switch", "every-step-large")
    monkeypatch.setenv("STITCHKIT_PLUGINS", "good")  # the entry point's name: loads it, and skips the broken one
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stitchkit.plugin_loading"):
        assert "every-step-large" in get_registry().names("switch")
    assert not caplog.records
