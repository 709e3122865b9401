"""The built-in metric plugins, registered through ``register_metrics`` like an outside plugin's.

Importing this module is cheap: each factory imports its library (torchmetrics, transformers) on first use.
"""

from __future__ import annotations

from stitchkit.hookspecs import hookimpl


@hookimpl
def register_metrics(register) -> None:
    from stitchkit.experiments.metrics import clip_score, fid, lpips, paired, shapes

    register("caption_accuracy", shapes.CaptionAccuracy)
    register("feature_distance", shapes.FeatureDistance)
    register("frechet", shapes.Frechet)
    register("psnr", paired.PSNR)
    register("ssim", paired.SSIM)
    register("fid", fid.FID)
    register("clip_score", clip_score.CLIPScore)
    register("lpips", lpips.LPIPS)
