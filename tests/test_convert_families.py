"""Tests of the conversion of the other transformers ViT families into UnipViTModel: DINOv2 (layer scale, mask token
dropped, bicubic position interpolation) and CLIP vision (no patch bias, the norm before the blocks, the final norm on
the pooled CLS token only), from saved folders, at the native size and at one where the positions are interpolated;
their attention maps read through `unip_hf.models.vit_family`; what is refused (SwiGLU, register tokens)."""

import json

import pytest
import torch
import transformers as T

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.conversion.convert import convert_checkpoint, convert_transformers_model
from unip_hf.conversion.checkpoint_reading import ConversionError
from unip_hf.models.vit_family import eager_attention, model_attentions

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
DINOV2 = dict(**COMMON, mlp_ratio=2, image_size=42, patch_size=14)  # a 3x3 grid
CLIP_VISION = dict(**COMMON, intermediate_size=64, image_size=32, patch_size=8)  # a 4x4 grid
CLIP_TEXT = dict(**COMMON, intermediate_size=64)


def tiny_dinov2() -> T.Dinov2Model:
    torch.manual_seed(0)
    model = T.Dinov2Model(T.Dinov2Config(**DINOV2, layerscale_value=0.5, layer_norm_eps=1e-6)).eval()
    with torch.no_grad():  # layer scales that differ per channel and position embeddings far from zero
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.1, 1.0)
            layer.layer_scale2.lambda1.uniform_(0.1, 1.0)
        model.embeddings.position_embeddings.normal_()
    return model


def tiny_clip_vision() -> T.CLIPVisionModel:
    torch.manual_seed(0)
    model = T.CLIPVisionModel(T.CLIPVisionConfig(**CLIP_VISION)).eval()
    with torch.no_grad():  # norms that are not the identity
        for norm in (model.pre_layrnorm, model.post_layernorm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    return model


def pixels(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


def test_dinov2_folder_matches_source_at_native_and_interpolated_sizes(tmp_path):
    source = tiny_dinov2()
    source.save_pretrained(tmp_path / "dinov2")
    convert_checkpoint(tmp_path / "dinov2", tmp_path / "out", "transformers")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (saved["layer_scale_init_value"], saved["patch_size"], saved["image_size"], saved["mlp_ratio"]) == (
        0.5, 14, 42, 2.0)
    converted = UnipViTModel.from_pretrained(tmp_path / "out").eval()
    assert "embeddings.mask_token" not in dict(converted.named_parameters())  # pre-training only: dropped
    torch.testing.assert_close(converted.encoder.layer[1].layer_scale2.lambda1,
                               source.encoder.layer[1].layer_scale2.lambda1)
    for size in (42, 56):  # 3x3 (the stored table), 4x4 (bicubic interpolation, as Dinov2Model does)
        x = pixels(size)
        with torch.no_grad():
            ours, theirs = converted(x), source(x)
        assert ours.last_hidden_state.shape == (2, 1 + (size // 14) ** 2, 32)
        torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=1e-5)


def test_clip_vision_folder_matches_source_at_native_and_interpolated_sizes(tmp_path):
    source = tiny_clip_vision()
    source.save_pretrained(tmp_path / "clip")
    convert_checkpoint(tmp_path / "clip", tmp_path / "out", "transformers")
    converted = UnipViTModel.from_pretrained(tmp_path / "out").eval()
    config = converted.config
    assert (config.patch_embedding_bias, config.pre_layernorm, config.layernorm_pooled_only) == (False, True, True)
    assert (config.hidden_act, config.layer_norm_eps) == ("quick_gelu", 1e-5)
    assert converted.embeddings.patch_embeddings.projection.bias is None
    for size in (32, 48):  # 4x4 (native), 6x6 (interpolated: CLIP with interpolate_pos_encoding=True)
        x = pixels(size)
        with torch.no_grad():
            ours = converted(x)
            theirs = source(x, interpolate_pos_encoding=size != 32)
        # CLIP's last_hidden_state is the raw output of the last block; post_layernorm acts on the pooled CLS only
        torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=1e-5)


def test_clip_model_folder_converts_its_vision_tower(tmp_path):
    torch.manual_seed(0)
    clip = T.CLIPModel(T.CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION)).eval()
    clip.save_pretrained(tmp_path / "clip")
    converted = convert_checkpoint(tmp_path / "clip", tmp_path / "out", "transformers")
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in clip.vision_model.parameters())
    x = pixels(32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).last_hidden_state, clip.vision_model(x).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
        # the image embedding of CLIP: its projection of the pooled output
        torch.testing.assert_close(clip.visual_projection(converted(x).pooler_output),
                                   clip.get_image_features(pixel_values=x).pooler_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_attention_maps_of_converted_models_match_the_sources(family):
    source = tiny_dinov2() if family == "dinov2" else tiny_clip_vision()
    converted = convert_transformers_model(source)
    patch = source.config.patch_size
    for size in (source.config.image_size, source.config.image_size + 2 * patch):
        x = pixels(size)
        with torch.no_grad(), eager_attention(source):
            theirs, their_prefix, their_grid = model_attentions(source, x)
        with torch.no_grad():
            ours, prefix, grid = model_attentions(converted, x)
        assert (prefix, grid) == (their_prefix, their_grid) == (1, (size // patch, size // patch))
        assert len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_swiglu_and_register_tokens_are_refused(tmp_path):
    swiglu = T.Dinov2Model(T.Dinov2Config(**DINOV2, use_swiglu_ffn=True))
    with pytest.raises(ConversionError, match="use_swiglu_ffn=True"):
        convert_transformers_model(swiglu)
    registers = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=2))
    registers.save_pretrained(tmp_path / "registers")
    for source in (registers, tmp_path / "registers"):
        with pytest.raises(ConversionError, match="no register tokens"):
            convert_transformers_model(source)


def test_new_options_default_to_the_existing_architecture(tmp_path):
    """A checkpoint saved before the options existed (no such keys in config.json) builds the same modules."""
    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    assert (config.patch_embedding_bias, config.pre_layernorm, config.layernorm_pooled_only) == (True, False, False)
    model = UnipViTModel(config).eval()
    keys = set(model.state_dict())
    assert "embeddings.patch_embeddings.projection.bias" in keys
    assert not any("pre_layernorm" in key for key in keys)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    for key in ("patch_embedding_bias", "pre_layernorm", "layernorm_pooled_only"):
        data.pop(key, None)
    path.write_text(json.dumps(data))
    reloaded = UnipViTModel.from_pretrained(tmp_path / "m").eval()
    x = pixels(32)
    with torch.no_grad():
        out = reloaded(x)
        torch.testing.assert_close(out.last_hidden_state, model(x).last_hidden_state)
    # the final norm acts on every token
    torch.testing.assert_close(out.last_hidden_state.mean(-1), torch.zeros(2, 17), atol=1e-5, rtol=0)
