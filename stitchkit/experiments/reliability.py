"""When a set metric's number means little: a Fréchet distance fits a Gaussian to the image features, and
its covariance needs more images than the features have dimensions to be full rank. Over 16 images the
shapes stand-in gave 995.7 for the large model itself (issue 24). A metric says from how many images per
method it is reliable (``min_images``); the table notes it and ``frontier.png`` draws no front on it below.
"""

from __future__ import annotations

from typing import Any


def unreliable(metric: Any, images: int) -> str | None:
    """``"unreliable below 200 images (16 here)"`` for a metric with ``min_images`` above ``images``."""
    needed = getattr(metric, "min_images", None)
    if needed is None or images >= needed:
        return None
    return f"unreliable below {needed} images ({images} here)"


def reliability_notes(metrics: dict[str, Any], images: int) -> list[str]:
    """One line per metric of the table that ``images`` per method are too few for."""
    return [f"{m.label}: {warning}" for m in metrics.values() if (warning := unreliable(m, images))]
