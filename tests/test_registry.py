"""The registry: built-ins load through the plugin path, names are unique, bad specs are one-line errors."""

import pytest

from stitchkit import ConfigError, hookimpl
from stitchkit.registry import DEFAULT_PLUGINS, get_registry, make_plugin_manager


def test_builtins_are_registered_as_plugins():
    pm = make_plugin_manager(entry_points=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert set(DEFAULT_PLUGINS) <= names
    registry = get_registry(entry_points=False)
    assert {"large", "small", "t-stitch", "srdiffusion", "hybridstitch", "hybridstitch-30",
            "staticmask-30", "fulllarge-30", "hybridstitch-40-30"} <= set(registry.names("switch"))
    assert {"top-k", "static", "full"} <= set(registry.names("mask"))
    assert {"kv-cache", "full-large"} <= set(registry.names("context"))
    assert registry.entry("switch", "t-stitch").origin == "stitchkit (built-in)"


def test_presets_carry_params_and_implied_policies():
    registry = get_registry(entry_points=False)
    policy, implied = registry.create("switch", "staticmask-30")
    assert tuple(policy.mask_ratios) == (0.3,) and tuple(policy.thresholds) == (0.5, 0.3)
    assert implied == {"mask": "static"}
    _, implied = registry.create("switch", "fulllarge-10")
    assert implied == {"context": "full-large"}
    policy, _ = registry.create("switch", {"kind": "hybridstitch-30", "thresholds": [0.6, 0.2]})
    assert tuple(policy.thresholds) == (0.6, 0.2) and tuple(policy.mask_ratios) == (0.3,)


def test_duplicate_name_names_both_sources():
    class Clash:
        @hookimpl
        def register_switch_policies(self, register):
            register("t-stitch", object)

    with pytest.raises(ConfigError) as err:
        get_registry(extra=[Clash()], entry_points=False)
    message = str(err.value)
    assert "registered twice" in message and "stitchkit (built-in)" in message and "Clash" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec, path_fragment",
    [
        ("no-such-policy", "switch: unknown switch policy 'no-such-policy'; known: "),
        ({"kind": "t-stitch", "bogus": 1}, "switch.bogus: unknown parameter of 't-stitch'; allowed: small_fraction"),
        ({"kind": "hybridstitch", "thresholds": [0.3, 0.5], "mask_ratios": [0.3]}, "switch.thresholds:"),
        ({"small_fraction": 0.3}, "switch.kind: missing or not a string"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, path_fragment):
    registry = get_registry(entry_points=False)
    with pytest.raises(ConfigError) as err:
        registry.create("switch", spec)
    assert path_fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_env_restricts_outside_plugins(monkeypatch):
    monkeypatch.setenv("STITCHKIT_PLUGINS", "")
    pm = make_plugin_manager()
    assert {pm.get_name(p) for p in pm.get_plugins()} == set(DEFAULT_PLUGINS)
