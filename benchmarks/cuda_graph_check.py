"""CUDA-graph replay must not change a generation: whole runs with graphs on and off, compared (GPU only).

    python benchmarks/cuda_graph_check.py      # exits non-zero if any method's latents differ
"""

from __future__ import annotations

import sys

import torch

from stitchkit.pipeline.pairs import load_pair_pipeline

HYBRID = {"kind": "hybridstitch", "thresholds": [1.0e9, 1.0e-12], "mask_ratios": [0.3]}


def main() -> int:
    pipe = load_pair_pipeline("sd3-paper-random")
    ok = True
    for switch in ("small", HYBRID):
        runs = []
        for graphs in (False, True):
            pipe.masked_large.cuda_graphs = graphs
            import stitchkit.loop.engine as engine

            engine.cuda_graphs_enabled = (lambda g=graphs: g)
            out = pipe("a bird", height=768, width=768, num_inference_steps=10, guidance_scale=4.5,
                       output_type="latent", generator=torch.Generator().manual_seed(0), switch=switch,
                       allow_unprofitable=True)
            runs.append((out.images.float(), sum(r.large_ms + r.small_ms for r in out.trace)))
        diff = (runs[0][0] - runs[1][0]).abs().max().item()
        name = switch if isinstance(switch, str) else "hybrid-30"
        print(f"{name:<10} max |graphs - eager| = {diff:.3g}; model ms eager {runs[0][1]:.0f}, graphs {runs[1][1]:.0f}")
        ok &= diff == 0.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
