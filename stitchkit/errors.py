"""The two errors a user of stitchkit meets.

``ConfigError`` is for anything a user wrote wrong (a policy name, a parameter, a YAML field). Its message
is one line, ``path.to.field: what is wrong; what is allowed``, so the CLI can print it as is and exit 2.
``NonFiniteError`` stops a generation the moment a model returns NaN or inf, naming the step and model,
instead of letting a black image appear fifty steps later.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A value the user supplied is invalid. The message names the field and what is allowed."""

    def __init__(self, path: str, problem: str, allowed: str | None = None) -> None:
        message = f"{path}: {problem}" if path else problem
        if allowed:
            message += f"; {allowed}"
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.allowed = allowed

    def at(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix`` put in front of its path (``methods[2]`` + ``switch.kind``)."""
        if not prefix:
            return self
        path = f"{prefix}.{self.path}" if self.path and not self.path.startswith("[") else prefix + self.path
        return ConfigError(path, self.problem, self.allowed)


class NonFiniteError(RuntimeError):
    """A model returned NaN or inf at some step; the generation was stopped there."""

    def __init__(self, step: int, model: str) -> None:
        super().__init__(f"step {step}: the {model} model returned NaN or inf; generation stopped")
        self.step = step
        self.model = model
