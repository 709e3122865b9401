"""What a step costs: the paper's latency model (Eq. 3-8, :mod:`.latency`), measured profiles and their
checks (:mod:`.profile`, :mod:`.profile_checks`), step costs from the loop's own timings (:mod:`.loop_costs`),
the plan checks a pipeline runs before generating (:mod:`.validation`) and the CPU thread policy that the
timings depend on (:mod:`.threads`).

It imports no experiment and no command (import-linter: ``pyproject.toml``).
"""
