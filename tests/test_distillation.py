"""Tests of NMI-HAD distillation (`unip_hf.pretraining.distillation`): the loss, the teacher adapter for every supported family,
the student side, teacher-layer choice, and the pre-training data (`unip_hf.data.pretraining_data`)."""

import math
import os

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.pretraining.distillation import (
    AttentionTeacher,
    NmiHadStudent,
    check_student_heads,
    feature_distillation_loss,
    nmi_had_loss,
    resolve_teacher_layer,
    student_attention_logits,
    unused_by_attention_target,
)
from unip_hf.data.pretraining_data import PretrainImageDataset, load_training_sources, scan_image_folder

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8)
FAMILIES = {
    "vit": (T.ViTModel, T.ViTConfig, {}),
    "vit_mae": (T.ViTMAEModel, T.ViTMAEConfig, {}),
    "deit": (T.DeiTModel, T.DeiTConfig, {}),
    "dinov2": (T.Dinov2Model, T.Dinov2Config, {}),
    "dinov2_registers": (T.Dinov2WithRegistersModel, T.Dinov2WithRegistersConfig, {"num_register_tokens": 2}),
    "clip": (T.CLIPVisionModel, T.CLIPVisionConfig, {}),
}


def tiny_teacher(family, **overrides):
    torch.manual_seed(0)
    if family == "unip":
        config = UnipConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8,
                            initializer_range=0.2, **overrides)
        return UnipViTModel(config).eval()
    model_cls, config_cls, extra = FAMILIES[family]
    return model_cls(config_cls(**{**TINY, **extra, **overrides})).eval()


def count_block_calls(model):
    teacher = AttentionTeacher(model, 0)
    calls = [0] * len(teacher.layers)
    for i, block in enumerate(teacher.layers):
        block.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def reference_probs(model, family, pixel_values, layer):
    """Eager `output_attentions` probabilities of one layer over [CLS, patches], renormalised."""
    kwargs = {}
    if family == "vit_mae":
        model.config.mask_ratio = 0.0
        kwargs["noise"] = torch.arange(16.0).expand(pixel_values.shape[0], -1)
    if family != "unip":
        model.set_attn_implementation("eager")
    out = model(pixel_values=pixel_values, output_attentions=True, output_hidden_states=True, **kwargs)
    probs = out.attentions[layer]
    prefix = probs.shape[-1] - 16
    keep = torch.tensor([0] + list(range(prefix, probs.shape[-1])))
    probs = probs[:, :, keep][:, :, :, keep]
    hidden = out.hidden_states[layer + 1][:, keep] if family != "unip" else None
    return probs / probs.sum(-1, keepdim=True), hidden


# ---------------------------------------------------------------------------------------------------------------- loss


def test_loss_matches_hand_computed_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    total, count = 0.0, 0
    for b in range(2):
        for h in range(3):
            for q in range(4):
                p_t = [math.exp(v) for v in teacher[b, h, q].tolist()]
                p_s = [math.exp(v) for v in student[b, h, q].tolist()]
                p_t = [v / sum(p_t) for v in p_t]
                p_s = [v / sum(p_s) for v in p_s]
                total += sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
                count += 1
    loss = nmi_had_loss(student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert nmi_had_loss(student, torch.log_softmax(teacher, -1), teacher_is_log_probs=True).item() == pytest.approx(
        total / count, rel=1e-5)
    assert nmi_had_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # half precision inputs are computed in float32
    assert nmi_had_loss(student.bfloat16(), teacher.bfloat16()).dtype == torch.float32


def test_loss_head_mismatch_says_how_to_configure():
    with pytest.raises(ValueError, match="last_layer_num_attention_heads=6"):
        nmi_had_loss(torch.randn(1, 3, 5, 5), torch.randn(1, 6, 5, 5))
    with pytest.raises(ValueError, match="different tokens"):
        nmi_had_loss(torch.randn(1, 3, 5, 5), torch.randn(1, 3, 7, 7))
    with pytest.raises(ValueError, match="last_layer_num_attention_heads=6"):
        check_student_heads(UnipConfig.from_preset("unip-tiny"), 6)
    check_student_heads(UnipConfig.from_preset("unip-tiny", last_layer_num_attention_heads=6), 6)


def test_feature_losses():
    a = torch.randn(2, 5, 8)
    assert feature_distillation_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distillation_loss(-a, a, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    target = torch.nn.functional.layer_norm(a, (8,))
    assert feature_distillation_loss(target, a, "smooth_l1").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature_loss"):
        feature_distillation_loss(a, a, "l2")


# ------------------------------------------------------------------------------------------------------------- teacher


@pytest.mark.parametrize("family", ["unip", *FAMILIES])
def test_teacher_matches_eager_attention_and_stops_early(family):
    model = tiny_teacher(family)
    pixel_values = torch.randn(2, 3, 32, 32)
    layer = 1
    calls = count_block_calls(model)
    teacher = AttentionTeacher(model, layer)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    logits = teacher(pixel_values)
    assert calls == [1, 0, 0, 0]  # block 0 in full; block 1 only its norm and q/k; nothing after
    assert logits.shape == (2, 4, 17, 17) and not logits.requires_grad
    probs, hidden = reference_probs(model, family, pixel_values, layer)
    torch.testing.assert_close(torch.softmax(logits.float(), -1), probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher(pixel_values, log_probs=True).exp(), probs, rtol=1e-4, atol=1e-5)
    if hidden is not None:
        calls[:] = [0] * 4
        features = teacher.features(pixel_values)
        torch.testing.assert_close(features, hidden, rtol=1e-4, atol=1e-5)
        assert calls == [1, 1, 0, 0]


def test_unip_teacher_matches_model_logits():
    model = tiny_teacher("unip")
    x = torch.randn(2, 3, 32, 32)
    reference = model(x, attention_logits_layers=[2], stop_after_layer=2).attention_logits[0]
    torch.testing.assert_close(AttentionTeacher(model, 2)(x), reference)
    torch.testing.assert_close(AttentionTeacher(model, -2)(x), reference)


def test_clip_full_model_uses_vision_tower():
    config = T.CLIPConfig(text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                       "intermediate_size": 64},
                          vision_config={**TINY})
    teacher = AttentionTeacher(T.CLIPModel(config), 1)
    assert teacher.family == "clip_vision_model"
    assert teacher(torch.randn(1, 3, 32, 32)).shape == (1, 4, 17, 17)


def test_grid_mismatch_resized_or_named():
    model = tiny_teacher("vit", patch_size=4)  # 8x8 grid on 32x32 images; the student's is 4x4
    teacher = AttentionTeacher(model, 1)
    assert teacher(torch.randn(1, 3, 32, 32), student_grid=(4, 4)).shape == (1, 4, 17, 17)
    strict = AttentionTeacher(model, 1, resize_to_student_grid=False)
    with pytest.raises(ValueError, match="8x8 grid.*4x4 grid"):
        strict(torch.randn(1, 3, 32, 32), student_grid=(4, 4))


@pytest.mark.parametrize("family", ["vit", "dinov2", "clip", "unip"])
def test_position_embeddings_interpolated(family):
    teacher = AttentionTeacher(tiny_teacher(family), 1)
    assert teacher(torch.randn(1, 3, 48, 48), student_grid=(6, 6)).shape == (1, 4, 37, 37)


def test_teacher_without_attention_is_an_error():
    config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])
    with pytest.raises(TypeError, match="no accessible list of transformer blocks"):
        AttentionTeacher(T.ResNetModel(config), 0)
    with pytest.raises(ValueError, match="out of range"):
        AttentionTeacher(tiny_teacher("vit"), 4)


def test_from_pretrained_and_auto_layer(tmp_path):
    model = tiny_teacher("unip")
    model.save_pretrained(tmp_path / "teacher")
    sample = torch.randn(4, 3, 32, 32)
    from unip_hf.analysis.attention_analysis import analyze_attention, choose_teacher_layer

    expected = choose_teacher_layer(analyze_attention(model, sample, progress=False))
    assert resolve_teacher_layer(model, "auto", sample) == expected
    teacher = AttentionTeacher.from_pretrained(str(tmp_path / "teacher"), "auto", sample)
    assert teacher.teacher_layer == expected and teacher.family == "unip"
    assert AttentionTeacher.from_pretrained(str(tmp_path / "teacher"), "2").teacher_layer == 2
    with pytest.raises(ValueError, match="needs sample images"):
        resolve_teacher_layer(model, "auto", None)
    with pytest.raises(ValueError, match="int or 'auto'"):
        resolve_teacher_layer(model, "middle", sample)


# ------------------------------------------------------------------------------------------------------------- student


def tiny_student(**overrides):
    torch.manual_seed(1)
    return UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   last_layer_num_attention_heads=4, image_size=32, patch_size=8, **overrides))


def test_student_logits_equal_model_logits_and_skip_unused_work():
    student = tiny_student().eval()
    x = torch.randn(2, 3, 32, 32)
    reference = student(x, attention_logits_layers=[-1]).attention_logits[0]
    torch.testing.assert_close(student_attention_logits(student, x), reference)
    wrapper = NmiHadStudent(student, "attention")
    frozen = set(unused_by_attention_target(student))
    assert "layernorm.weight" in frozen and "encoder.layer.2.mlp.fc1.weight" in frozen
    assert "encoder.layer.2.attention.qkv.weight" not in frozen
    loss = nmi_had_loss(wrapper(x), torch.randn(2, 4, 17, 17))
    loss.backward()
    trainable = {n for n, p in wrapper.student.named_parameters() if p.requires_grad}
    assert trainable and not (trainable & frozen)
    assert all(wrapper.student.get_parameter(n).grad is not None for n in trainable if "position" not in n)


def test_student_targets():
    x = torch.randn(2, 3, 32, 32)
    features = NmiHadStudent(tiny_student(), "features", teacher_hidden_size=48)
    assert features(x).shape == (2, 17, 48)
    with pytest.raises(ValueError, match="distill_target"):
        NmiHadStudent(tiny_student(), "logits")


# ---------------------------------------------------------------------------------------------------------------- data


def write_images(folder, count, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / f"im{i}.png")


def test_folder_scan_recursive_symlinks_and_unreadable(tmp_path):
    write_images(tmp_path / "data" / "a", 3)
    write_images(tmp_path / "elsewhere", 2)
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "linked")
    Image.fromarray(np.full((20, 20), 30000, dtype=np.uint16)).save(tmp_path / "data" / "a" / "deep16.png")
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not an image")
    files, bad = scan_image_folder(str(tmp_path / "data"))
    assert len(files) == 6 and bad == 1
    sources, skipped, described = load_training_sources([str(tmp_path / "data")])
    assert skipped == 1 and "1 unreadable skipped" in described[0]
    from unip_hf.data.transforms import PretrainTransform

    dataset = PretrainImageDataset(sources, PretrainTransform(size=32, seed=0), skipped)
    view = dataset[(0, 2)]["pixel_values"]
    assert view.shape == (3, 32, 32)
    torch.testing.assert_close(dataset[(0, 2)]["pixel_values"], view)
    assert not torch.equal(dataset[(1, 2)]["pixel_values"], view)


def test_truncated_image_skipped_at_load(tmp_path):
    write_images(tmp_path, 2)
    data = (tmp_path / "im0.png").read_bytes()
    (tmp_path / "im0.png").write_bytes(data[: len(data) // 3])  # header fine, pixels missing
    from unip_hf.data.transforms import PretrainTransform

    sources, _, _ = load_training_sources([str(tmp_path)])
    dataset = PretrainImageDataset(sources, PretrainTransform(size=16))
    assert dataset[(0, 0)]["pixel_values"].shape == (3, 16, 16)
    assert dataset.skipped_at_load == 1


def test_empty_and_missing_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable image"):
        load_training_sources([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError):
        load_training_sources([str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="train_data is required"):
        load_training_sources([])


def test_saved_dataset_source(tmp_path):
    import datasets

    write_images(tmp_path / "imgs", 3)
    table = datasets.Dataset.from_dict({"image": [str(p) for p in sorted((tmp_path / "imgs").iterdir())]}).cast_column(
        "image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    sources, skipped, _ = load_training_sources([str(tmp_path / "saved"), str(tmp_path / "imgs")])
    from unip_hf.data.transforms import PretrainTransform

    dataset = PretrainImageDataset(sources, PretrainTransform(size=16))
    assert len(dataset) == 6 and skipped == 0
    assert dataset[(0, 4)]["pixel_values"].shape == (3, 16, 16)


def test_unreadable_image_counted_once_however_often_drawn(tmp_path):
    write_images(tmp_path, 3)
    data = (tmp_path / "im1.png").read_bytes()
    (tmp_path / "im1.png").write_bytes(data[: len(data) // 3])
    from unip_hf.data.transforms import PretrainTransform

    sources, _, _ = load_training_sources([str(tmp_path)])
    dataset = PretrainImageDataset(sources, PretrainTransform(size=16))
    for epoch in range(3):
        assert dataset[(epoch, 1)]["pixel_values"].shape == (3, 16, 16)
    assert dataset.skipped_at_load == 1
