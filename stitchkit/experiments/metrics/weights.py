"""Where a metric's weights come from: a path in the YAML, the user's cache, or a download the user enables.

Nothing here downloads: a metric whose weights are neither given nor cached, and whose ``download`` is not
set, refuses the run before any image is generated (one line naming the metric and the three ways).
"""

from __future__ import annotations

import os
from pathlib import Path

from stitchkit.errors import ConfigError


def torch_hub_checkpoint(filename: str) -> Path:
    """Where ``torch.hub`` keeps a downloaded checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def file_weights(kind: str, given: str | None, cache_name: str, download: bool, what: str) -> Path | None:
    """A weights file: the given path, else the torch hub cache; ``None`` means "download when scoring"."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError("weights", f"no such file: {path}", f"the {what} of {kind}")
        return path
    cached = torch_hub_checkpoint(cache_name)
    if cached.is_file():
        return cached
    if download and not os.environ.get("HF_HUB_OFFLINE"):
        return None
    raise ConfigError("", f"{kind} needs the {what} ({cache_name}), not found in {cached.parent}",
                      "give weights: PATH in the metric, put the file in that cache, or set download: true")
