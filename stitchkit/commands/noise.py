"""What the command line prints besides its answer: one line per warning, and the third-party notes that a
researcher cannot act on (transformers' "requires torchvision ... falling back" notes, its "Loading weights
37/37" bar, diffusers' loading bars) silenced unless ``--verbose``.

Environment variables are set with ``setdefault`` (a user's own ``TRANSFORMERS_VERBOSITY`` wins); a library
already imported is told through its logging API, because it read the variable when it was imported.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: Read by transformers, diffusers and huggingface_hub when they are imported.
QUIET_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
#: The flag of the top-level group, accepted after the subcommand too (``stitchkit run x.yaml --verbose``).
VERBOSE_FLAGS = ("--verbose", "-v")


def hoist_verbose(args: list[str]) -> list[str]:
    """``run x.yaml --verbose`` -> ``--verbose run x.yaml``: the group's flag wherever it is written (up to a
    ``--``, after which everything is an argument)."""
    end = args.index("--") if "--" in args else len(args)
    found = [a for a in args[:end] if a in VERBOSE_FLAGS]
    if not found:
        return args
    return [VERBOSE_FLAGS[0]] + [a for a in args[:end] if a not in VERBOSE_FLAGS] + args[end:]


def one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as ``PresetSamplerWarning: <message>``: no source line, no file path."""
    return f"{category.__name__}: {message}\n"


class StderrHandler(logging.StreamHandler):
    """stitchkit's ``--verbose`` log on whatever ``sys.stderr`` is when a record is written (not the one at
    start-up), one handler per process however often the flag is given."""

    NAME = "stitchkit-verbose"

    def __init__(self) -> None:
        super().__init__()
        self.set_name(self.NAME)
        self.setFormatter(logging.Formatter("stitchkit: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it; sys.stderr is always read
        pass


def verbose_log(on: bool) -> None:
    """stitchkit's own loggers at INFO on stderr (``on``), or back to their defaults."""
    logger = logging.getLogger("stitchkit")
    ours = [h for h in logger.handlers if h.get_name() == StderrHandler.NAME]
    for handler in ours:
        logger.removeHandler(handler)
    if on:
        logger.addHandler(StderrHandler())
        logger.setLevel(logging.INFO)
    elif ours:  # only undo what an earlier --verbose did
        logger.setLevel(logging.NOTSET)


def one_line_warnings() -> None:
    """Every warning printed as one line (:func:`one_line`), each distinct message once: the Eq. 7-8 check
    warns from the run's check and again from the first generation, two call sites of one message."""
    warnings.formatwarning = one_line
    warnings.filterwarnings("once", category=UserWarning)


def configure_output(verbose: bool) -> None:
    """One line per warning, each distinct message once; third-party notes and bars off unless ``verbose``,
    stitchkit's own log on with it."""
    one_line_warnings()
    verbose_log(verbose)
    if verbose:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if "huggingface_hub" in sys.modules:  # transformers reads its switch when it is imported
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
