"""A YAML loader that refuses duplicate mapping keys.

PyYAML's ``safe_load`` lets the last of two equal keys win without a word (``steps: 4`` then ``steps: 40``
runs 40 steps); an experiment file is read with :func:`load` instead, which names the key and its line.
"""

from __future__ import annotations

from typing import Any

import yaml

from stitchkit.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key that appears twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # PyYAML refuses it itself, with its own message
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(str(key), f"duplicate key at line {line} (first at line {seen[key]})",
                                      "keep one of them")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The YAML document in ``text``; a duplicate key is a :class:`ConfigError`."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
