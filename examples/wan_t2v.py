"""Wan 2.1 text-to-video with the 14B model stitched to the 1.3B one (HybridStitch), from the Python API.

    python examples/wan_t2v.py            # the real pair: a GPU with ~90 GB, bf16
    python examples/wan_t2v.py --pair wan-tiny-random --height 32 --width 48 --frames 9 --steps 4

(the second, with ``--max-sequence-length 16``, is a CPU smoke run on the tiny random pair).

Writes, per method, ``<out>/<method>.mp4`` (diffusers' export_to_video), ``<method>-frames.png`` (a frame
strip), ``<method>-mask.png`` (the first hybrid step's mask on chosen frames, when there is one) and
``trace.json`` (every step's stage, tokens and timings). The settings follow examples/wan_t2v.yaml.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

LARGE = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
SMALL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
PROMPT = "A cat walks on the grass, realistic"
#: The methods compared: the two models alone, and HybridStitch with 30% of the video tokens recomputed by
#: the large model in the hybrid stage (thresholds on D_t, Eq. 9-10, computed over all video tokens).
METHODS = {
    "large": {"switch": "large"},
    "small": {"switch": "small"},
    "srdiffusion": {"switch": "srdiffusion"},
    "hybridstitch-30": {"switch": "hybridstitch-30"},
}


def main(argv: list[str] | None = None) -> dict:
    from stitchkit import StitchPipeline
    from stitchkit.pipeline.pairs import load_pair_pipeline
    from stitchkit.pipeline.video import frame_strip, mask_strip, save_video

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default=None, help="a registered pair instead of the hub checkpoints")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--max-sequence-length", type=int, default=512)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=Path("runs/wan_t2v"))
    args = parser.parse_args(argv)

    if args.pair:
        pipe = load_pair_pipeline(args.pair)
    else:
        pipe = StitchPipeline.from_pretrained(LARGE, SMALL, torch_dtype=torch.bfloat16, device="cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    traces = {}
    for name in args.methods.split(","):
        seen = []
        start = time.perf_counter()
        out = pipe(PROMPT, height=args.height, width=args.width, num_frames=args.frames,
                   num_inference_steps=args.steps, guidance_scale=args.guidance,
                   max_sequence_length=args.max_sequence_length, output_type="np",
                   generator=torch.Generator().manual_seed(0), callback=seen.append, **METHODS[name])
        seconds = time.perf_counter() - start
        frames = out.images[0]
        save_video(frames, args.out / f"{name}.mp4")
        frame_strip(frames).save(args.out / f"{name}-frames.png")
        hybrid = next((s for s in seen if s["indices"] is not None), None)
        if hybrid is not None:
            latents = hybrid["latents"]
            p_t, p_h, p_w = pipe.adapter.patch_size
            grid = (latents.shape[2] // p_t, latents.shape[3] // p_h, latents.shape[4] // p_w)
            mask_strip(frames, grid, hybrid["indices"][0].tolist()).save(args.out / f"{name}-mask.png")
        traces[name] = {"seconds": seconds, "steps": [r.to_dict() for r in out.trace]}
        print(f"{name:>16}: {seconds:8.1f} s, large-token steps "
              f"{sum(r.large_tokens for r in out.trace) / out.trace[0].num_tokens:.2f}")
    (args.out / "trace.json").write_text(json.dumps(traces, indent=1))
    return traces


if __name__ == "__main__":
    main()
