"""UnipForSmallTargetSegmentation (issue 11): shapes at odd sizes and patch sizes, save/load, Auto classes, remote
code without the package, pipeline on 8-bit and 16-bit images, the small-target losses on hand-made masks, and the
distillation losses."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, pipeline

import unip_hf  # noqa: F401  (registers the Auto classes)
from unip_hf import UnipConfig, UnipForSmallTargetSegmentation, UnipSmallTargetConfig, UnipViTModel
from unip_hf.models.losses import (
    attention_transfer_loss,
    binary_cross_entropy_loss,
    deep_supervision_loss,
    focal_loss,
    logit_distillation_loss,
    small_target_loss,
    soft_iou_loss_binary,
)
from unip_hf.models.pipeline_unip import UnipImageSegmentationPipeline
from unip_hf.evaluation.model_saving import make_processor


def tiny_config(**overrides):
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
                    detail_channels=[4, 8, 8])
    settings.update(overrides)
    return UnipSmallTargetConfig(**settings)


@pytest.mark.parametrize("patch", [8, 16])
@pytest.mark.parametrize("size", [(37, 53), (32, 32), (17, 9)])
def test_logits_at_input_resolution_for_any_size(patch, size):
    torch.manual_seed(0)
    model = UnipForSmallTargetSegmentation(tiny_config(patch_size=patch, image_size=2 * patch))
    pixels = torch.randn(2, 3, *size)
    labels = torch.zeros(2, *size, dtype=torch.long)
    labels[:, size[0] // 2, size[1] // 2] = 1
    output = model(pixels, labels=labels)
    assert output.logits.shape == (2, 2, *size)
    assert output.target_logits.shape == (2, 1, *size)
    # background logit 0: the softmax target probability is the sigmoid of the target logit
    probability = output.logits.softmax(1)[:, 1:]
    assert torch.allclose(probability, torch.sigmoid(output.target_logits), atol=1e-6)
    assert torch.isfinite(output.loss) and output.loss.requires_grad
    # deep supervision: one map per coarser decoder stage, in training only
    assert [tuple(a.shape[-2:]) for a in output.auxiliary_logits] == [
        (math.ceil(size[0] / 4), math.ceil(size[1] / 4)), (math.ceil(size[0] / 2), math.ceil(size[1] / 2))]
    model.eval()
    assert model(pixels).auxiliary_logits is None
    output.loss.backward()
    assert model.detail_stages[0][0].weight.grad is not None and model.unip.embeddings.patch_embeddings.projection.weight.grad is not None


def test_tuple_output_and_decoder_states():
    model = UnipForSmallTargetSegmentation(tiny_config()).eval()
    pixels = torch.randn(1, 3, 24, 40)
    logits, target = model(pixels, return_dict=False)
    assert logits.shape == (1, 2, 24, 40) and target.shape == (1, 1, 24, 40)
    states = model(pixels, output_hidden_states=True).decoder_hidden_states
    assert [s.shape[1] for s in states] == [8, 8, 4] and states[-1].shape[-2:] == (24, 40)


def test_classifier_starts_at_the_target_prior():
    model = UnipForSmallTargetSegmentation(tiny_config(target_prior=0.01)).eval()
    assert float(model.classifier.bias.detach()) == pytest.approx(math.log(0.01 / 0.99), abs=1e-5)
    with torch.no_grad():
        probability = torch.sigmoid(model(torch.randn(1, 3, 32, 32)).target_logits).mean()
    assert probability < 0.1


def test_config_checks_and_round_trip(tmp_path):
    assert UnipSmallTargetConfig().num_labels == 2 and UnipSmallTargetConfig().model_type == "unip_small_target"
    for overrides, message in [({"detail_channels": []}, "detail_channels"), ({"pixel_loss": "dice"}, "pixel_loss"),
                               ({"context_layer": 5}, "context_layer"), ({"target_prior": 1.0}, "target_prior")]:
        with pytest.raises(ValueError, match=message):
            tiny_config(**overrides)
    with pytest.raises(ValueError, match="num_labels must be 2"):
        UnipForSmallTargetSegmentation(tiny_config(num_labels=3))
    config = tiny_config(detail_channels=[8, 16], context_layer=0, pixel_loss="focal")
    config.save_pretrained(tmp_path)
    loaded = UnipSmallTargetConfig.from_pretrained(tmp_path)
    assert loaded.detail_channels == [8, 16] and loaded.context_layer == 0 and loaded.pixel_loss == "focal"


def test_context_layer_stops_the_backbone_early():
    model = UnipForSmallTargetSegmentation(tiny_config(num_hidden_layers=3, context_layer=0)).eval()
    calls = []
    for block in model.unip.encoder.layer:
        block.register_forward_hook(lambda *args: calls.append(1))
    model(torch.randn(1, 3, 16, 16))
    assert len(calls) == 1


def test_save_load_auto_class_and_backbone_initialisation(tmp_path):
    torch.manual_seed(0)
    model = UnipForSmallTargetSegmentation(tiny_config()).eval()
    model.save_pretrained(tmp_path / "st")
    auto_map = json.loads((tmp_path / "st" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_unip_small_target.UnipForSmallTargetSegmentation"
    assert auto_map["AutoConfig"] == "configuration_unip.UnipSmallTargetConfig"
    assert (tmp_path / "st" / "losses.py").is_file()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "st").eval()
    assert isinstance(loaded, UnipForSmallTargetSegmentation)
    pixels = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, loaded(pixels).logits)
    # a plain UNIP backbone checkpoint initialises the context branch
    backbone = UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                                       image_size=32))
    backbone.save_pretrained(tmp_path / "vit")
    config = tiny_config()
    from_backbone = UnipForSmallTargetSegmentation.from_pretrained(tmp_path / "vit", config=config)
    saved, transferred = backbone.state_dict(), from_backbone.unip.state_dict()
    assert saved.keys() == transferred.keys()
    assert all(torch.equal(saved[key], transferred[key]) for key in saved)


def test_remote_code_imports_only_torch_and_transformers(tmp_path):
    UnipForSmallTargetSegmentation(tiny_config()).save_pretrained(tmp_path)
    for name in ("configuration_unip.py", "modeling_unip.py", "losses.py"):
        imports = re.findall(r"^(?:from|import)\s+([\w.]+)", (tmp_path / name).read_text(), flags=re.M)
        assert {module.split(".")[0] for module in imports} <= {"", "__future__", "json", "os", "shutil", "collections",
                                                                 "dataclasses", "typing", "torch", "transformers"}


HIDDEN_PACKAGE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, json
    class HideUnip(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "unip_hf" or name.startswith("unip_hf."):
                raise ImportError("unip_hf is hidden for this test")
            return None
    sys.meta_path.insert(0, HideUnip())
    import torch
    from transformers import AutoModelForSemanticSegmentation
    model = AutoModelForSemanticSegmentation.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    pixels = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(pixels).logits
    loss = model.train()(pixels, labels=torch.zeros(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long)).loss
    print(json.dumps({"cls": type(model).__name__, "module": type(model).__module__, "shape": list(logits.shape),
                      "logits_sum": float(logits.double().sum()), "loss": float(loss)}))
    """
)


def test_remote_code_loads_without_package(tmp_path):
    torch.manual_seed(0)
    model = UnipForSmallTargetSegmentation(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    pixels = torch.randn(1, 3, 37, 53)
    torch.save(pixels, tmp_path / "pixels.pt")
    (tmp_path / "load.py").write_text(HIDDEN_PACKAGE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "ckpt"),
                             str(tmp_path / "pixels.pt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["cls"] == "UnipForSmallTargetSegmentation" and info["module"].startswith("transformers_modules")
    assert info["shape"] == [1, 2, 37, 53] and math.isfinite(info["loss"])
    with torch.no_grad():
        expected = float(model(pixels).logits.double().sum())
    assert info["logits_sum"] == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.fixture
def saved_small_target(tmp_path):
    torch.manual_seed(0)
    model = UnipForSmallTargetSegmentation(tiny_config(
        id2label={0: "background", 1: "target"}, label2id={"background": 0, "target": 1}, target_prior=0.5)).eval()
    with torch.no_grad():  # a model that calls "target" wherever the input is bright, so the masks are not empty
        model.classifier.bias.fill_(0.0)
    model.save_pretrained(tmp_path)
    make_processor(model.config, None).save_pretrained(tmp_path)
    return tmp_path, model


def test_pipeline_on_an_8bit_sirst_image(saved_small_target, shared_data):
    folder, model = saved_small_target
    path = shared_data("sirst", "images", "Misc_1.png")
    segmenter = pipeline("image-segmentation", model=str(folder))
    assert isinstance(segmenter.model, UnipForSmallTargetSegmentation)
    segments = segmenter(str(path))
    image = Image.open(path)
    assert segments and all(s["mask"].size == image.size for s in segments)
    assert {s["label"] for s in segments} <= {"background", "target"}


def test_infrared_pipeline_on_a_16bit_image(saved_small_target, tmp_path):
    folder, model = saved_small_target
    rng = np.random.default_rng(0)
    raw = rng.integers(7000, 7400, (37, 53)).astype(np.uint16)
    raw[18, 26] = 9000
    path = tmp_path / "frame16.png"
    Image.fromarray(raw).save(path)
    segmenter = pipeline("infrared-image-segmentation", model=str(folder))
    assert isinstance(segmenter, UnipImageSegmentationPipeline)
    processor = segmenter.image_processor
    expected = processor.post_process_semantic_segmentation(
        model(**processor(raw, return_tensors="pt")), target_sizes=[(37, 53)])[0].numpy()
    segments = segmenter(str(path))
    assert all(s["mask"].size == (53, 37) for s in segments)
    for segment in segments:
        label = model.config.label2id[segment["label"]]
        assert np.array_equal(np.asarray(segment["mask"]) > 0, expected == label)


# --- losses on hand-made masks --------------------------------------------------------------------------------

def _hand_made():
    # 1 image 2x3: target pixels at (0, 0) and (0, 1); logits chosen so that sigmoid gives round probabilities
    labels = torch.tensor([[[1, 1, 0], [0, 0, 255]]])
    probabilities = torch.tensor([[[0.8, 0.5, 0.2], [0.5, 0.2, 0.9]]])
    return torch.logit(probabilities), labels, probabilities


def test_soft_iou_by_hand():
    logits, labels, _ = _hand_made()
    # valid pixels: all but (1, 2); intersection 0.8 + 0.5 = 1.3; sum p = 0.8+0.5+0.2+0.5+0.2 = 2.2; sum y = 2
    intersection, union = 1.3, 2.2 + 2.0 - 1.3
    assert float(soft_iou_loss_binary(logits, labels, smooth=0.0)) == pytest.approx(1 - intersection / union, abs=1e-6)
    assert float(soft_iou_loss_binary(logits, labels, smooth=1.0)) == pytest.approx(1 - 2.3 / (union + 1), abs=1e-6)
    perfect = torch.tensor([[[20.0, 20.0, -20.0], [-20.0, -20.0, 5.0]]])
    assert float(soft_iou_loss_binary(perfect, labels, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)


def test_bce_and_focal_by_hand():
    logits, labels, _ = _hand_made()
    # -log p on targets, -log(1 - p) on background, ignored pixel excluded, mean over 5 pixels
    terms = [-math.log(0.8), -math.log(0.5), -math.log(0.8), -math.log(0.5), -math.log(0.8)]
    assert float(binary_cross_entropy_loss(logits, labels)) == pytest.approx(sum(terms) / 5, abs=1e-6)
    # focal: p_t = 0.8, 0.5, 0.8, 0.5, 0.8; alpha_t = 0.75 on targets, 0.25 on background; gamma 2
    p_t = [0.8, 0.5, 0.8, 0.5, 0.8]
    alpha = [0.75, 0.75, 0.25, 0.25, 0.25]
    expected = sum(-a * (1 - p) ** 2 * math.log(p) for a, p in zip(alpha, p_t)) / 5
    assert float(focal_loss(logits, labels, gamma=2.0, alpha=0.75)) == pytest.approx(expected, abs=1e-6)
    # gamma 0, alpha 0.5 is half the BCE
    assert float(focal_loss(logits, labels, gamma=0.0, alpha=0.5)) == pytest.approx(sum(terms) / 10, abs=1e-6)


def test_small_target_loss_sums_terms_and_deep_supervision():
    logits, labels, _ = _hand_made()
    iou, bce = soft_iou_loss_binary(logits, labels), binary_cross_entropy_loss(logits, labels)
    assert float(small_target_loss(logits, labels)) == pytest.approx(float(iou + bce), abs=1e-6)
    assert float(small_target_loss(logits, labels, soft_iou_weight=2.0, pixel_loss_weight=0.5)) == pytest.approx(
        float(2 * iou + 0.5 * bce), abs=1e-6)
    # an auxiliary map at half resolution is upsampled to the labels: a constant map stays constant
    aux = torch.full((1, 1, 1, 2), 0.0)
    aux_value = small_target_loss(torch.zeros(1, 2, 3), labels)
    total = deep_supervision_loss(logits, [aux], labels, auxiliary_weight=0.5)
    assert float(total) == pytest.approx(float(iou + bce + 0.5 * aux_value), abs=1e-6)


def test_model_loss_is_the_configured_loss():
    torch.manual_seed(0)
    model = UnipForSmallTargetSegmentation(tiny_config(deep_supervision=False, pixel_loss="focal"))
    pixels, labels = torch.randn(2, 3, 16, 24), torch.zeros(2, 16, 24, dtype=torch.long)
    labels[0, 3, 4] = 1
    labels[1, 0, :] = 255
    output = model(pixels, labels=labels)
    expected = small_target_loss(output.target_logits, labels, pixel_loss="focal")
    assert float(output.loss) == pytest.approx(float(expected), abs=1e-6)


def test_distillation_losses_by_hand():
    student = torch.tensor([[0.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.0]])
    assert float(logit_distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    # KL(Bern(0.5) || Bern(sigmoid(2))) for the second pixel, 0 for the first, averaged
    q = 1 / (1 + math.exp(-2.0))
    kl = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))
    assert float(logit_distillation_loss(student, teacher)) == pytest.approx(kl / 2, abs=1e-6)
    # temperature T: logits divided by T, loss times T^2
    q2 = 1 / (1 + math.exp(-1.0))
    kl2 = 0.5 * math.log(0.5 / q2) + 0.5 * math.log(0.5 / (1 - q2))
    assert float(logit_distillation_loss(student, teacher, temperature=2.0)) == pytest.approx(4 * kl2 / 2, abs=1e-6)
    # attention transfer: channel-independent, 0 for proportional maps, 2 for disjoint ones (unit vectors)
    a = torch.zeros(1, 3, 2, 2)
    a[:, :, 0, 0] = 1.0
    b = torch.zeros(1, 5, 2, 2)
    b[:, :, 1, 1] = 2.0
    assert float(attention_transfer_loss(a, a.repeat(1, 2, 1, 1) * 3)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_transfer_loss(a, b)) == pytest.approx(2.0, abs=1e-6)
