"""``stitchkit train-pair``: train the shapes pair (and optionally its judge) from a seed, reproducibly.

The defaults reproduce the shipped pair (``stitchkit/pairs/shapes/``; 1,392 steps of 1,024 pictures, 4.5
minutes on one H100, days on a CPU)::

    stitchkit train-pair --out runs/shapes-pair --evaluate 200

Resumes from ``OUT/checkpoint.pt`` when one is there. Writes the EMA pair to ``OUT/pair`` (diffusers'
layout, ready for ``load_shapes_pair``); ``--also-small 1x160`` trains extra small candidates alongside
(into ``OUT/variants``; they change nothing else); ``--max-minutes`` stops on the wall clock, checkpoints
and exports. With ``--evaluate N`` it also writes ``OUT/eval.json`` and a grid of every model's pictures
per guidance scale, ``OUT/grid_g<guidance>.png`` (one row per model, 16 prompts).

The option defaults mirror :class:`stitchkit.shapes.train.TrainConfig` (a test checks it); they are
spelled out here so that ``stitchkit --help`` does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train-pair")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/shapes-pair"),
              show_default=True, help="Folder for checkpoints, the log and the exported pair.")
@click.option("--steps", type=int, default=1392, show_default=True, help="Optimizer steps in all.")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--max-minutes", type=float, default=None,
              help="Stop, checkpoint and export after this much wall-clock time.")
@click.option("--large", "large_size", default="6x128", show_default=True, metavar="LAYERSxWIDTH",
              help="The large transformer's depth and width (heads of 32).")
@click.option("--small", "small_size", default="2x64", show_default=True, metavar="LAYERSxWIDTH",
              help="The small transformer's depth and width (heads of 32).")
@click.option("--warmup", type=int, default=200, show_default=True, help="Linear warm-up steps.")
@click.option("--ema-decay", type=float, default=0.998, show_default=True)
@click.option("--also-small", "also_small", multiple=True, metavar="LAYERSxWIDTH",
              help="Train an extra small candidate alongside (e.g. 2x96); exported to OUT/variants.")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--train-classifier", "classifier_steps", type=int, default=0,
              help="First train the attribute classifier for this many steps into OUT/classifier.")
@click.option("--classifier", "classifier_path", type=click.Path(path_type=Path), default=None,
              help="Classifier for --evaluate (default: OUT/classifier if trained, else the shipped one).")
@click.option("--evaluate", "eval_count", type=int, default=0, help="Measure both models on this many prompts.")
@click.option("--guidance", "guidances", type=float, multiple=True, help="Guidance scale(s) for --evaluate.")
@click.option("--progress/--no-progress", default=True)
def command(out: Path, steps: int, batch_size: int, lr: float, seed: int, device: str | None,
            max_minutes: float | None, large_size: str, small_size: str, warmup: int, ema_decay: float,
            also_small: tuple[str, ...], checkpoint_every: int, resume: bool,
            classifier_steps: int, classifier_path: Path | None, eval_count: int, guidances: tuple[float, ...],
            progress: bool) -> None:
    """Train the shapes pair (large + small SD3 transformers in pixel space, shared text encoder)."""
    import torch

    from stitchkit.errors import ConfigError
    from stitchkit.shapes import classifier as cls
    from stitchkit.shapes.pair import DEFAULT_GUIDANCE, PairConfig, TransformerSize, load_shapes_pair
    from stitchkit.shapes.train import VARIANTS_DIR, TrainConfig, train_pair

    try:
        pair_config = PairConfig(large=TransformerSize.parse(large_size), small=TransformerSize.parse(small_size))
        config = TrainConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                             ema_decay=ema_decay, pair=pair_config,
                             extra_smalls=tuple(TransformerSize.parse(s) for s in also_small),
                             checkpoint_every=checkpoint_every)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")

    if classifier_steps:
        model = cls.train_classifier(cls.ClassifierTraining(steps=classifier_steps,
                                                            batch_size=256 if dev.startswith("cuda") else 128),
                                     device=dev, progress=progress)
        held_out = cls.held_out_accuracy(model, 4000)
        noisy = cls.held_out_accuracy(model, 4000, noise=0.1)
        click.echo(f"classifier held-out accuracy: {json.dumps(held_out)}")
        click.echo(f"classifier held-out accuracy, noise 0.1: {json.dumps(noisy)}")
        classifier_path = classifier_path or out / "classifier"
        cls.save_classifier(model, classifier_path, metadata={
            "training": {"steps": classifier_steps, "seed": cls.ClassifierTraining().seed},
            "held_out_seed": cls.HELD_OUT_SEED, "held_out_accuracy": held_out,
            "held_out_accuracy_noise_0.1": noisy})

    result = train_pair(config, out, device=dev, max_minutes=max_minutes, resume=resume, progress=progress)
    click.echo(f"trained {result.step} steps in {result.minutes:.1f} min"
               f"{' (stopped by --max-minutes)' if result.stopped_by_time else ''}; pair: {result.pair_path}")

    if eval_count:
        from diffusers import SD3Transformer2DModel

        from stitchkit.shapes.evaluate import evaluate_pair
        from stitchkit.shapes.world import save_grid

        judge = cls.load_classifier(classifier_path, device=dev)
        pair = load_shapes_pair(result.pair_path, device=dev)
        extras = {}
        for folder in sorted((out / VARIANTS_DIR).glob("transformer_*")):
            extras[folder.name.removeprefix("transformer_")] = SD3Transformer2DModel.from_pretrained(
                folder, local_files_only=True, torch_dtype=torch.float32).to(dev).eval()
        reports = []
        for guidance in guidances or (DEFAULT_GUIDANCE,):
            report = evaluate_pair(pair, judge, count=eval_count, guidance=guidance, models=extras)
            images = report.pop("images")
            grid = torch.cat([images[name][:16] for name in images])
            save_grid(grid, out / f"grid_g{guidance:g}.png", columns=16)
            reports.append(report)
            for name in images:
                acc = report[name]["accuracy"]
                click.echo(f"guidance {guidance:g} {name:>12}: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
                           + f" frechet {report[name]['frechet']:.3f}")
        (out / "eval.json").write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":  # python -m stitchkit.commands.train_pair (before the CLI group has it)
    command()
