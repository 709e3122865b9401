"""The CLI's thread policy for Python calls: ``StitchPipeline.__call__`` runs with the thread count
``stitchkit run`` would choose (:func:`stitchkit.cost.threads.apply_threads`: ``OMP_NUM_THREADS`` if
exported, else one thread for a pair whose large transformer has fewer than 20 M parameters, every core
otherwise), and puts torch's setting back afterwards.

Why: torch's default (a spinning OpenMP thread per core) made one 20-step call of the shapes pair take
8.9-24.7 s beside a busy neighbour against 0.3 s on one thread (issue 24). ``pipe.threads`` overrides it:
``"auto"`` (default) as above, an int for that many threads, ``None`` to leave torch's setting alone.
``stitchkit run`` sets it to the count it chose (``--threads``, ``sampler.threads``), so both agree.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from stitchkit.cost.threads import apply_threads
from stitchkit.errors import ConfigError

#: ``pipe.threads`` value meaning "as the CLI chooses".
AUTO = "auto"


def call_threads(pipe: Any) -> int | None:
    """The thread count a call of ``pipe`` runs with, set now (``None``: ``pipe.threads`` is ``None``)."""
    wanted = pipe.threads
    if wanted is None:
        return None
    if wanted != AUTO and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1):
        raise ConfigError("threads", f"{wanted!r} is not a thread count",
                          'give "auto" (the CLI\'s choice), a whole number >= 1, or None (torch\'s setting)')
    return apply_threads(None if wanted == AUTO else wanted, pipe.adapter.large_transformer, pipe.small,
                         device=pipe.adapter.device.type)


def with_thread_policy(call: Callable) -> Callable:
    """Decorate ``__call__``: :func:`call_threads` before, torch's previous thread count restored after."""

    @functools.wraps(call)  # keeps the signature diffusers' is compared with
    def wrapper(self, *args: Any, **kwargs: Any):
        before = torch.get_num_threads()
        call_threads(self)
        try:
            return call(self, *args, **kwargs)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    return wrapper
