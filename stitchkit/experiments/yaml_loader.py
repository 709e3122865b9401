"""A YAML reader that refuses duplicate mapping keys, naming the key's full path and line.

PyYAML's ``safe_load`` lets the last of two equal keys win without a word (``steps: 4`` then ``steps: 40``
runs 40 steps); an experiment file is read with :func:`load` instead: the document is composed into nodes
first, every mapping is checked for a key written twice (``sampler.steps: duplicate key at line 5 (first at
line 3)``), then constructed by ``yaml.SafeLoader`` as before.
"""

from __future__ import annotations

from typing import Any

import yaml

from stitchkit.errors import ConfigError


def _check(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in seen:
                    raise ConfigError(where, f"duplicate key at line {line} (first at line {seen[key]})",
                                      "keep one of them")
                seen[key] = line
            _check(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check(item, f"{path}[{i}]")


def load(text: str) -> Any:
    """The YAML document in ``text`` (``yaml.safe_load``); a duplicate key is a :class:`ConfigError`."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _check(node, "")
    return yaml.safe_load(text)
