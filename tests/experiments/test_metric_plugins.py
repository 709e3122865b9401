"""The metric plugins: refused without weights before anything runs, and on tiny backbones saved to tmp
folders checked against independent computations (never a download)."""

import textwrap

import numpy as np
import pytest
import torch

from stitchkit import ConfigError
from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.metrics.base import MetricBatch
from stitchkit.registry import get_registry


def _create(spec):
    return get_registry(entry_points=False).create("metric", spec)[0]


def _images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --- refusals: one line naming the metric, before any image is generated --------------------------------

@pytest.mark.parametrize("metric, message", [
    ("{kind: clip_score, model: openai/not-cached-here}",
     "metrics[0]: clip_score needs the CLIP weights of openai/not-cached-here, not in the Hugging Face cache; "
     "give model: PATH"),
    ("{kind: clip_score, model: /no/such/clip}", "metrics[0].model: no CLIP model folder at /no/such/clip"),
    ("{kind: lpips}", "metrics[0]: lpips needs the alex backbone weights (alexnet-owt-7be5be79.pth), not found in"),
    ("{kind: lpips, net: vgg, weights: /no/vgg.pth}", "metrics[0].weights: no such file: /no/vgg.pth"),
    ("{kind: lpips, net: resnet}", "metrics[0].net: unknown LPIPS backbone 'resnet'"),
    ("{kind: fid}", "metrics[0].reference: missing: fid compares against real images"),
    ("{kind: fid, reference: /no/such/folder}", "metrics[0].reference: no such folder or .npz"),
    ("{kind: fid, reference: REAL}", "metrics[0]: fid needs torch-fidelity's Inception network"),
    ("{kind: fid, reference: REAL, features: /no/f.pt}", "metrics[0].features: no such file: /no/f.pt"),
    ("{kind: frechet}", "metrics[0]: frechet needs the shapes pair's attribute classifier"),
])
def test_missing_weights_refuse_the_run_before_any_image(tmp_path, monkeypatch, capsys, metric, message):
    from stitchkit.cli import main
    from stitchkit.experiments import runner

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "real").mkdir()
    monkeypatch.setattr(runner, "load_pair", lambda config: pytest.fail("the pair was loaded"))
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""
        pair: tiny-random
        prompts: [a cat]
        metrics: [{metric.replace("REAL", str(tmp_path / "real"))}]
        methods: [large]
        output: out
    """))
    assert main(["run", str(exp), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stitchkit run: error: {message}"), err
    assert "\n" not in err and not (tmp_path / "out").exists()


# --- PSNR / SSIM: the same definitions the stand-in tests check by hand ----------------------------------

def test_psnr_and_ssim_plugins_feed_batches_and_average_per_image():
    from stitchkit.shapes.scores import psnr, ssim

    a, b = _images(5, 0), _images(5, 1)
    batches = [MetricBatch(images=a[:3], prompts=["x"] * 3, large_images=b[:3]),
               MetricBatch(images=a[3:], prompts=["x"] * 2, large_images=b[3:])]
    assert _create("psnr").score(batches) == pytest.approx(float(psnr(a, b).mean()))
    assert _create("ssim").score(batches) == pytest.approx(float(ssim(a, b).mean()))


# --- FID: torchmetrics with a feature module passed in --------------------------------------------------

class _Features(torch.nn.Module):
    """A tiny fixed feature network: (N, 3, H, W) in [0, 1] -> (N, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean((2, 3))


def _save_png(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        array = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}.png")


def _png_roundtrip(images):
    return torch.from_numpy(np.round((images.numpy() + 1) * 127.5).clip(0, 255) / 127.5 - 1).float()


@pytest.fixture()
def features(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.script(_Features().eval()).save(str(path))
    return path


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy(tmp_path, features):
    from scipy import linalg

    real, fake = _png_roundtrip(_images(24, 2)), _png_roundtrip(_images(24, 3).clamp(0, 1))
    _save_png(tmp_path / "real", real)
    fid = _create({"kind": "fid", "reference": str(tmp_path / "real"), "features": str(features)})
    fid.check(pair_name=None)
    assert fid.score([MetricBatch(images=real, prompts=[""] * 24)]) == pytest.approx(0.0, abs=1e-6)
    value = fid.score([MetricBatch(images=fake[:10], prompts=[""] * 10),
                       MetricBatch(images=fake[10:], prompts=[""] * 14)])
    net = torch.jit.load(str(features))  # the textbook formula with scipy's sqrtm, same features
    with torch.no_grad():
        f1, f2 = (net((x + 1) / 2).double().numpy() for x in (fake, real))
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert value == pytest.approx(expected, rel=1e-3) and value > 1e-3


def test_fid_reads_precomputed_statistics(tmp_path, features):
    real = _png_roundtrip(_images(24, 2))
    net = torch.jit.load(str(features))
    with torch.no_grad():
        f = net((real + 1) / 2).double().numpy()
    np.savez(tmp_path / "stats.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False), n=len(f))
    fid = _create({"kind": "fid", "reference": str(tmp_path / "stats.npz"), "features": str(features)})
    assert fid.score([MetricBatch(images=real, prompts=[""] * 24)]) == pytest.approx(0.0, abs=1e-6)


# --- LPIPS: torchmetrics' network with a torchvision-free backbone --------------------------------------

@pytest.fixture(scope="module")
def alex_weights(tmp_path_factory):
    from stitchkit.experiments.metrics.lpips import backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in backbone("alex").state_dict().items()}, path)
    return path


def test_lpips_of_an_image_with_itself_is_zero(alex_weights):
    lpips = _create({"kind": "lpips", "weights": str(alex_weights)})
    lpips.check(pair_name=None)
    a, b = _images(3, 4, 64), _images(3, 5, 64)
    assert lpips.score([MetricBatch(images=a, prompts=[""] * 3, large_images=a)]) == 0.0
    ab = lpips.score([MetricBatch(images=a, prompts=[""] * 3, large_images=b)])
    ba = lpips.score([MetricBatch(images=b, prompts=[""] * 3, large_images=a)])
    assert ab > 0 and ab == pytest.approx(ba)


def test_lpips_matches_the_formula_by_hand(alex_weights):
    """Zhang et al. Eq. 1: per layer, unit-normalise channels, squared difference weighted by the learned
    linear layer, spatial mean; summed over layers. Computed here from the layers' raw outputs."""
    from stitchkit.experiments.metrics.lpips import load_backbone, lpips_network

    net = lpips_network("alex", alex_weights)
    a, b = _images(2, 6, 64), _images(2, 7, 64)
    features = load_backbone("alex", alex_weights)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = (1, 4, 7, 9, 11)  # the ReLU after each of AlexNet's five convolutions

    def layers(x):
        out, h = [], (x - shift) / scale
        for i, layer in enumerate(features):
            h = layer(h)
            if i in taps:
                out.append(h.clone())
        return out

    with torch.no_grad():
        total = torch.zeros(2)
        for k, (fa, fb) in enumerate(zip(layers(a), layers(b))):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = net.lins[k].model[-1].weight.view(1, -1, 1, 1)
            total += ((na - nb) ** 2 * w).sum(1).mean((1, 2))
        expected = float(total.mean())
    value = _create({"kind": "lpips", "weights": str(alex_weights)}).score(
        [MetricBatch(images=a, prompts=["", ""], large_images=b)])
    assert value == pytest.approx(expected, rel=1e-4)


# --- CLIP score: torchmetrics on a tiny CLIP saved to a folder -------------------------------------------

def _tiny_clip_folder(tmp_path):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTokenizerFast, CLIPVisionConfig)

    tokenizer_dir = __import__("pathlib").Path(__import__("stitchkit").__file__).parent / "pairs" / "shapes" / "tokenizer"
    tokenizer = CLIPTokenizerFast.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37,
                                   num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                   projection_dim=16, eos_token_id=tokenizer.eos_token_id,
                                   bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
        projection_dim=16)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_matches_a_hand_computation_with_clipmodel(tmp_path, monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _tiny_clip_folder(tmp_path)
    metric = _create({"kind": "clip_score", "model": str(folder)})
    metric.check(pair_name=None)
    images = _png_roundtrip(_images(3, 8, 32))
    prompts = ["a red circle", "a small blue square at the top left", "a green ring"]
    value = metric.score([MetricBatch(images=images[:2], prompts=prompts[:2]),
                          MetricBatch(images=images[2:], prompts=prompts[2:])])
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    pixels = [((im + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy() for im in images]
    with torch.no_grad():
        inputs = processor(text=prompts, images=pixels, return_tensors="pt", padding=True)
        # The full forward's logits are exp(logit_scale) * cos(image, text) for every pair: take the diagonal.
        logits = model(**inputs).logits_per_image
        cos = logits.diagonal() / model.logit_scale.exp()
    expected = float((100 * cos.clamp_min(0)).mean())
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)


# --- the hook: built-ins and an outside plugin go through register_metrics --------------------------------

def test_plugins_command_lists_the_metrics(capsys):
    from stitchkit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("metrics:"):]
    for line in ("  clip_score: model=openai/clip-vit-large-patch14, download=False, device=-  [stitchkit (built-in)]",
                 "  fid: reference=-, features=-, weights=-, download=False, device=-",
                 "  lpips: net=alex, weights=-, download=False, device=-", "  psnr: no parameters", "  caption_accuracy:"):
        assert line in section, line


def test_an_outside_metric_plugin_registers_through_the_hook(tmp_path):
    import attrs

    from stitchkit import hookimpl

    @attrs.define
    class Brightness:
        label, unit, higher_is_better, digits = "brightness", "", True, 3
        needs, per_image = frozenset({"image"}), True
        scale: float = 1.0

        def check(self, *, pair_name):
            pass

        def score(self, batches):
            from stitchkit.experiments.metrics.base import weighted_mean

            return weighted_mean(batches, lambda b: self.scale * (b.images.flatten(1).mean(1) + 1) / 2)

    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register("brightness", Brightness)

    registry = get_registry(entry_points=False, extra=[Plugin()])
    assert registry.entry("metric", "brightness").origin.endswith("Plugin")
    config = ExperimentConfig.from_dict({"prompts": ["a cat"], "methods": ["large"],
                                         "metrics": [{"kind": "brightness", "scale": 2.0}]},
                                        base=tmp_path, registry=registry)
    assert config.metrics[0].kind == "brightness" and config.metrics[0].params == {"scale": 2.0}
    metric = registry.create("metric", {"kind": "brightness", "scale": 2.0})[0]
    assert metric.score([MetricBatch(images=torch.zeros(2, 3, 4, 4), prompts=["", ""])]) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"^metrics\[0\]\.scal: unknown parameter of 'brightness'"):
        ExperimentConfig.from_dict({"prompts": ["a"], "methods": ["large"],
                                    "metrics": [{"kind": "brightness", "scal": 2}]}, registry=registry)


def test_clip_score_refuses_a_prompt_past_its_token_limit(tmp_path, monkeypatch):
    from transformers import CLIPTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _tiny_clip_folder(tmp_path)
    metric = _create({"kind": "clip_score", "model": str(folder)})
    tokenizer = CLIPTokenizerFast.from_pretrained(folder)

    def count(text):  # an independent count: the tokenizer torchmetrics uses, start and end tokens included
        return len(tokenizer(text, verbose=False)["input_ids"])

    words = "red " * 80
    assert count(words) > 77
    assert metric.check_prompt(words) == (f"{count(words)} CLIP tokens, past the 77 CLIP reads (clip_score would "
                                          "score its first part only)")
    fits = max(n for n in range(1, 80) if count("red " * n) <= 77)
    assert metric.check_prompt("red " * fits) is None and metric.check_prompt("red " * (fits + 1)) is not None

    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.preflight import check_prompts

    (tmp_path / "exp.yaml").write_text(f"name: c\npair: tiny-random\nprompts: [a red circle, '{words}']\nseeds: [0]\n"
                                       f"metrics: [{{kind: clip_score, model: {folder}}}]\nmethods: [large]\n")
    with pytest.raises(ConfigError, match=r"^prompts\[1\]: \d+ CLIP tokens, past the 77 CLIP reads .*; reword the "
                                          r"prompt, or remove clip_score \(metrics\[0\]\)$"):
        check_prompts(ExperimentConfig.from_yaml(tmp_path / "exp.yaml"))
