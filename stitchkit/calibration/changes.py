"""Thresholds are model-specific: measure D_t on large-only runs and look at its distribution per step.

The paper's thresholds (§4.1) were chosen for SD3.5 Large / SD3 Medium; another pair's D_t (Eq. 9-10)
falls at its own pace. ``stitchkit calibrate EXPERIMENT.yaml`` runs the large model alone over the
experiment's prompts and seeds and prints, per step, quantiles of every change measure (and of the drop
tanh(D_{t-1}) - tanh(D_t) of the output measure, what SRDiffusion's ``xdit`` and ``tanh-drop`` rules compare),
from which a switch step — and so a threshold — can be read off. ``--method M --target-...`` (in
:mod:`stitchkit.calibration.setup`) does the reading off itself.
"""

from __future__ import annotations

import numpy as np
import torch

from stitchkit.loop.change import MEASURES, StepTensors

QUANTILES = (0.1, 0.5, 0.9)


def collect_changes(pipe, config, *, progress: bool = False) -> dict[str, np.ndarray]:
    """``{measure: array (units × samples, steps)}`` of D_t on large-only runs (NaN where undefined)."""
    from tqdm.auto import tqdm

    s = config.sampler
    rows: dict[str, list[np.ndarray]] = {name: [] for name in MEASURES}
    units = [(p, seed) for p in config.prompts for seed in config.seeds]
    for prompt, seed in tqdm(units, disable=not progress, desc="calibrate"):
        steps: list[StepTensors] = []

        def keep(step: dict) -> None:
            steps.append(step["tensors"])

        pipe(prompt, height=s.height, width=s.width, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
             negative_prompt=s.negative_prompt, max_sequence_length=s.max_sequence_length, output_type="latent",
             generator=torch.Generator().manual_seed(seed), switch="large", callback=keep, num_frames=s.num_frames)
        for name, measure in MEASURES.items():
            per_step, previous = [], None
            for current in steps:
                change, _ = measure(previous, current, pipe.adapter.patch_size)
                per_step.append(np.full(1, np.nan) if change is None else change.float().cpu().numpy())
                previous = current
            rows[name].append(np.stack(per_step, axis=1))
    return {name: np.concatenate(r, axis=0) for name, r in rows.items()}


def srdiffusion_drops(output_changes: np.ndarray) -> np.ndarray:
    """The tanh-drop d_{t-1} - d_t with d_t = tanh(output change) (SRDiffusion's ``xdit``/``tanh-drop`` rules)."""
    d = np.tanh(output_changes)
    drops = np.full_like(d, np.nan)
    drops[:, 1:] = d[:, :-1] - d[:, 1:]
    return drops


def quantile_table(changes: dict[str, np.ndarray]) -> list[str]:
    columns = {f"{name} D_t": values for name, values in changes.items()}
    columns["tanh(output) d_(t-1)-d_t"] = srdiffusion_drops(changes["output"])
    head = "step " + " ".join(f"{name:>30}" for name in columns)
    sub = "     " + " ".join(f"{'p10 / p50 / p90':>30}" for _ in columns)
    lines = [head, sub]
    for step in range(next(iter(columns.values())).shape[1]):
        cells = []
        for values in columns.values():
            col = values[:, step]
            col = col[np.isfinite(col)]
            cells.append(f"{'-':>30}" if col.size == 0 else
                         f"{' / '.join(f'{q:.4f}' for q in np.quantile(col, QUANTILES)):>30}")
        lines.append(f"{step:>4} " + " ".join(cells))
    return lines


def first_step_below(changes: np.ndarray, threshold: float) -> np.ndarray:
    """Per run, the first step whose D_t is below ``threshold`` (``steps`` when none is)."""
    below = np.nan_to_num(changes, nan=np.inf) < threshold
    return np.where(below.any(axis=1), below.argmax(axis=1), changes.shape[1])
