"""Train the shapes pair: both transformers and the shared text encoder, jointly, from one seed.

Rectified flow in diffusers' FlowMatchEuler convention: ``x_t = (1 − t)·x0 + t·ε``, the model predicts
``v = ε − x0`` at timestep ``1000·t``, so that sampling's ``x ← x + (σ_next − σ)·v`` and ``x0 = x − σ·v``
hold with ``σ = t``. ``t`` is logit-normal (SD3's default) or uniform; 10% of captions are dropped to the
empty prompt so that classifier-free guidance works.

Every step is a pure function of ``(seed, step)``: the batch is scenes ``step·B … step·B + B − 1`` of
``ShapesWorld(seed)`` and the noise, timesteps and caption dropout come from generators seeded with
``(seed, step)``. A checkpoint therefore needs only the weights, the EMA weights, the optimizer state and
the step, and a resumed run continues exactly as an uninterrupted one (bit for bit on a CPU).

The shared text encoder learns from the large model's loss; the small model(s) read its output detached,
as SD3 Medium reads the text encoders it shares with SD3.5 Large. So each small model's training does not
depend on any other's, and extra small candidates (``extra_smalls``) can be trained alongside the pair
without changing it.

AdamW with linear warm-up then a constant learning rate (so a wall-clock stop does not cut a schedule
short), per-model gradient clipping, and an EMA of every model; the exported pair holds the EMA weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from stitchkit.errors import ConfigError
from stitchkit.shapes.pair import (
    PairConfig,
    ShapesPair,
    TransformerSize,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    encode_tokens,
    seed_for,
    tokenize,
)
from stitchkit.shapes.world import ShapesWorld, upload

TIMESTEP_SAMPLINGS = ("logit-normal", "uniform")
SHIPPED_STEPS = 1392
CHECKPOINT = "checkpoint.pt"
PAIR_DIR = "pair"
VARIANTS_DIR = "variants"
LOG = "train_log.jsonl"


def _in(allowed):
    def check(instance, attribute, value) -> None:
        if value not in allowed:
            raise ConfigError(attribute.name, f"unknown value {value!r}", f"one of {', '.join(allowed)}")

    return check


def _at_least(low: float, *, strict: bool = False):
    def check(instance, attribute, value) -> None:
        if value < low or (strict and value == low):
            raise ConfigError(attribute.name, f"{value} is out of range",
                              f"{'above' if strict else 'at least'} {low}")

    return check


@attrs.frozen(kw_only=True)
class TrainConfig:
    """What fixes the trained weights. Where and how fast it runs (device, time limit) is not here."""

    seed: int = 0
    #: The shipped pair's length: 1,392 steps of 1,024 pictures, 4.5 minutes on one H100.
    steps: int = attrs.field(default=SHIPPED_STEPS, validator=_at_least(1))
    batch_size: int = attrs.field(default=1024, validator=_at_least(1))
    lr: float = attrs.field(default=1e-3, validator=_at_least(0.0, strict=True))
    warmup: int = attrs.field(default=200, validator=_at_least(0))
    weight_decay: float = attrs.field(default=0.01, validator=_at_least(0.0))
    beta2: float = 0.99
    grad_clip: float = attrs.field(default=1.0, validator=_at_least(0.0, strict=True))
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    timesteps: str = attrs.field(default="logit-normal", validator=_in(TIMESTEP_SAMPLINGS))
    pair: PairConfig = attrs.field(factory=PairConfig)
    extra_smalls: tuple[TransformerSize, ...] = attrs.field(default=(), converter=tuple)

    @extra_smalls.validator
    def _check_extra_smalls(self, attribute, value) -> None:
        names = [size.name for size in (self.pair.small, *value)]
        for i, name in enumerate(names[1:]):
            if name in names[:i + 1]:
                raise ConfigError(f"extra_smalls[{i}]", f"size {name} is trained already", "give each size once")
    checkpoint_every: int = attrs.field(default=1000, validator=_at_least(1))
    log_every: int = attrs.field(default=100, validator=_at_least(1))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def same_run(self, other: TrainConfig) -> bool:
        """Whether a checkpoint of ``other`` can be resumed under ``self`` (only ``steps`` and the
        checkpoint/log cadence may differ)."""
        keep = {"steps": 1, "checkpoint_every": 1, "log_every": 1}
        return attrs.evolve(self, **keep) == attrs.evolve(other, **keep)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["pair"] = PairConfig.from_dict(data.get("pair", {}))
        data["extra_smalls"] = tuple(TransformerSize(**s) if isinstance(s, dict) else s
                                     for s in data.get("extra_smalls", ()))
        return cls(**data)


@attrs.frozen(kw_only=True)
class TrainResult:
    step: int
    pair_path: Path
    checkpoint_path: Path
    minutes: float
    stopped_by_time: bool


def small_names(config: TrainConfig) -> list[str]:
    """``["small", "small_2x96", …]``: the pair's small model, then each extra candidate."""
    return ["small", *(f"small_{size.name}" for size in config.extra_smalls)]


class _Run:
    """The models, their EMA copies and the optimizer of one training run."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        pc = config.pair
        self.tokenizer = build_tokenizer()
        sizes = {"large": pc.large, "small": pc.small}
        sizes.update({name: size for name, size in zip(small_names(config)[1:], config.extra_smalls)})
        self.models: dict[str, torch.nn.Module] = {}
        torch.manual_seed(seed_for(config.seed, "text_encoder"))
        self.models["text_encoder"] = build_text_encoder(pc, self.tokenizer)
        for name, size in sizes.items():
            # Small models are seeded by their size, not their role: a candidate promoted to be the
            # pair's small model starts from the same weights.
            torch.manual_seed(seed_for(config.seed, "large" if name == "large" else f"small_{size.name}"))
            self.models[name] = build_transformer(pc, size)
        self.ema: dict[str, torch.nn.Module] = {}
        for name, model in self.models.items():
            model.to(device).train()
            ema = _copy_model(model).to(device).eval()
            ema.requires_grad_(False)
            self.ema[name] = ema
        decay, no_decay = [], []
        for model in self.models.values():
            for p in model.parameters():
                (decay if p.ndim >= 2 else no_decay).append(p)
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, config.beta2), **({"fused": True} if fused else {}),
        )
        self.world = ShapesWorld(seed=config.seed, resolution=pc.resolution)
        self.step = 0
        self._ids: dict[str, list[int]] = {}

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "ema": {k: m.state_dict() for k, m in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        for k, m in self.ema.items():
            m.load_state_dict(state["ema"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def save_checkpoint(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids on the device, each distinct caption tokenized once (the world's are finite)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        if missing:
            self._ids.update(zip(missing, tokenize(self.tokenizer, missing).tolist()))
        return upload([self._ids[t] for t in texts], torch.long, self.device)

    # -- one step ---------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.config.warmup and step < self.config.warmup:
            return self.config.lr * (step + 1) / self.config.warmup
        return self.config.lr

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step; returns each model's loss as a 0-d tensor (not synchronised)."""
        cfg, device, step = self.config, self.device, self.step
        b = cfg.batch_size
        cpu_gen = torch.Generator("cpu").manual_seed(seed_for(cfg.seed, "step") + step)
        dev_gen = torch.Generator(device).manual_seed(seed_for(cfg.seed, "noise") + step)

        x0, texts = self.world.training_batch(step * b, b, device=device)
        dropped = (torch.rand(b, generator=cpu_gen) < cfg.caption_dropout).tolist()
        texts = ["" if d else text for d, text in zip(dropped, texts)]
        if cfg.timesteps == "logit-normal":
            t = torch.sigmoid(torch.randn(b, generator=cpu_gen))
        else:
            t = torch.rand(b, generator=cpu_gen)
        t = upload(t, torch.float32, device)
        noise = torch.randn(x0.shape, generator=dev_gen, device=device)
        tt = t[:, None, None, None]
        xt = (1.0 - tt) * x0 + tt * noise
        target = noise - x0
        timestep = t * 1000.0
        ids = self.tokenize(texts)

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        losses: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            embeds, pooled = encode_tokens(self.models["text_encoder"], ids)
            for name, model in self.models.items():
                if name == "text_encoder":
                    continue
                # The text encoder learns from the large model only; small models read it detached.
                e, p = (embeds, pooled) if name == "large" else (embeds.detach(), pooled.detach())
                pred = model(hidden_states=xt, timestep=timestep, encoder_hidden_states=e,
                             pooled_projections=p, return_dict=False)[0]
                losses[name] = F.mse_loss(pred.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()
        torch.nn.utils.clip_grad_norm_(
            [*self.models["text_encoder"].parameters(), *self.models["large"].parameters()], cfg.grad_clip)
        for name in small_names(cfg):
            torch.nn.utils.clip_grad_norm_(self.models[name].parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, model in self.models.items():
            ema_params = list(self.ema[name].parameters())
            params = [p.detach() for p in model.parameters()]
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    # -- export -----------------------------------------------------------------------------------------
    def export(self, out: Path, metadata: dict[str, Any]) -> Path:
        """Write the EMA pair to ``out/pair`` and each extra small candidate to ``out/variants``."""
        pc = self.config.pair
        pair = ShapesPair(tokenizer=self.tokenizer, text_encoder=self.ema["text_encoder"],
                          large=self.ema["large"], small=self.ema["small"], scheduler=build_scheduler(pc),
                          resolution=pc.resolution, patch_size=pc.patch_size)
        path = pair.save(out / PAIR_DIR, metadata=metadata)
        for name in small_names(self.config)[1:]:
            folder = out / VARIANTS_DIR / f"transformer_{name}"
            model = self.ema[name]
            model.to(torch.float16)
            try:
                model.save_pretrained(folder, safe_serialization=True)
            finally:
                model.to(torch.float32)
        return path


def _copy_model(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_pair(config: TrainConfig, out: str | os.PathLike, *, device: str | torch.device | None = None,
               max_minutes: float | None = None, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train (or resume) into folder ``out``: ``checkpoint.pt`` every ``checkpoint_every`` steps,
    ``train_log.jsonl``, and at the end (``config.steps`` reached or ``max_minutes`` of wall clock spent)
    the EMA pair in ``out/pair``."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    run = _Run(config, device)
    checkpoint = out / CHECKPOINT
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
        if not config.same_run(saved):
            raise ConfigError("out", f"{checkpoint} belongs to a different training configuration",
                              "use another --out, or --no-resume to start over")
        run.load_state_dict(state)
    sizes = {name: count_parameters(m) for name, m in run.models.items()}
    log_path = out / LOG
    with log_path.open("a") as log:
        log.write(json.dumps({"event": "start", "step": run.step, "device": str(device), "parameters": sizes,
                              "config": config.to_dict()}) + "\n")

    deadline = start + 60.0 * max_minutes if max_minutes is not None else math.inf
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    stopped_by_time = False
    bar = tqdm(total=config.steps, initial=run.step, desc="train-pair", disable=not progress, smoothing=0.05)
    while run.step < config.steps:
        if time.perf_counter() >= deadline:
            stopped_by_time = True
            break
        losses = run.train_step()
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        seen += 1
        bar.update(1)
        if run.step % config.log_every == 0 or run.step == config.steps:
            means = {k: round(float(v) / seen, 5) for k, v in sums.items()}
            for k, v in means.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"step {run.step}: the {k} model's loss is {v}")
            bar.set_postfix({k.replace("small_", "s"): f"{v:.4f}" for k, v in means.items()})
            with log_path.open("a") as log:
                log.write(json.dumps({"step": run.step, "loss": means, "lr": run.lr_at(run.step - 1),
                                      "seconds": round(time.perf_counter() - start, 1)}) + "\n")
            sums, seen = {}, 0
        if run.step % config.checkpoint_every == 0:
            run.save_checkpoint(checkpoint)
    bar.close()
    run.save_checkpoint(checkpoint)
    minutes = (time.perf_counter() - start) / 60
    metadata = {"training": {"step": run.step, "seed": config.seed, "batch_size": config.batch_size,
                             "device": str(device), "minutes": round(minutes, 2), "parameters": sizes,
                             "config": config.to_dict()}}
    pair_path = run.export(out, metadata)
    with log_path.open("a") as log:
        log.write(json.dumps({"event": "end", "step": run.step, "minutes": round(minutes, 2),
                              "stopped_by_time": stopped_by_time}) + "\n")
    return TrainResult(step=run.step, pair_path=pair_path, checkpoint_path=checkpoint, minutes=minutes,
                       stopped_by_time=stopped_by_time)
