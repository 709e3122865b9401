"""The experiment side of stitchkit: YAML config, prompt sources, sweeps, the runner, metrics, reports.

The loop (``engine``), the policies and the model adapters never import this package; it drives them.
"""
