"""The denoising loop: the paper's Algorithm 1 (:mod:`.engine`), per-sample decisions (:mod:`.per_sample`),
the change measures of Eq. 9-10 (:mod:`.change`), the per-step trace (:mod:`.trace`), the run-time checks of
what policies answer (:mod:`.protocol_checks`) and diffusers' cache hooks attached for one generation
(:mod:`.caches`).

It imports the plugin contract (``stitchkit.protocols``, ``.masks``, ``.tokens``, ``.errors``) and
``stitchkit.models``; never an experiment, a family, the pipeline, a command or calibration (import-linter
checks this: ``pyproject.toml``).
"""
