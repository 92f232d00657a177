"""Tests of the weight conversion paths into UnipViTModel (official UNIP / timm layout, transformers ViTs; DINOv2 and
CLIP vision in test_convert_families.py)."""

import json
import re

import pytest
import torch
from transformers import AutoModel, DeiTConfig, DeiTModel, ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

from unip_hf import UnipConfig, UnipViTModel
from unip_hf.cli import main as cli_main
from unip_hf.conversion.convert import convert_checkpoint, convert_transformers_model
from unip_hf.conversion.checkpoint_reading import ConversionError, convert_timm_state_dict, infer_config_from_timm

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)


def to_timm_layout(model: UnipViTModel) -> dict[str, torch.Tensor]:
    """Write a UNIP backbone's weights with timm / official-UNIP key names (the inverse of the converter)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("head_index"):
            continue
        key = key.replace("embeddings.cls_token", "cls_token").replace("embeddings.position_embeddings", "pos_embed")
        key = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        key = key.replace("embeddings.pre_layernorm", "norm_pre")
        key = re.sub(r"^layernorm\.", "norm.", key)
        key = re.sub(r"^encoder\.layer\.", "blocks.", key)
        key = key.replace(".attention.qkv", ".attn.qkv").replace(".attention.proj", ".attn.proj")
        key = re.sub(r"layer_scale(\d)\.lambda1", r"ls\1.gamma", key)
        out[key] = value.clone()
    return out


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_official_unip_checkpoint_with_wider_last_block(tmp_path, pixels):
    torch.manual_seed(0)
    source = UnipViTModel(UnipConfig(**TINY, last_layer_num_attention_heads=4, position_embedding_type="learned")).eval()
    state = to_timm_layout(source)
    state["head.weight"] = torch.randn(10, 32)  # classifier of the pre-training code, not part of the backbone
    path = tmp_path / "unip_vit_tiny.pth"
    torch.save({"model": state, "epoch": 99}, path)
    converted = convert_checkpoint(path, tmp_path / "out", "unip", num_attention_heads=2, last_layer_num_attention_heads=4)
    assert converted.config.last_block_heads == 4 and converted.config.num_attention_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)
    reloaded = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert reloaded.encoder.layer[-1].attention.num_heads == 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).last_hidden_state, source(pixels).last_hidden_state)


def test_infer_config_from_timm_shapes():
    source = UnipViTModel(UnipConfig(**TINY, mlp_ratio=2.0, qkv_bias=False, layer_scale_init_value=0.1))
    config = infer_config_from_timm(to_timm_layout(source), num_attention_heads=2)
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size, config.image_size) == (32, 3, 8, 32)
    assert config.mlp_ratio == 2.0 and config.qkv_bias is False and config.layer_scale_init_value is not None
    with pytest.raises(ConversionError, match="not a timm-layout"):
        infer_config_from_timm({"foo": torch.zeros(1)})


def test_timm_layer_scale_round_trip(pixels):
    source = UnipViTModel(UnipConfig(**TINY, layer_scale_init_value=0.1, position_embedding_type="learned")).eval()
    with torch.no_grad():
        source.encoder.layer[0].layer_scale1.lambda1.uniform_()
    converted = convert_timm_state_dict(to_timm_layout(source), num_attention_heads=2)
    torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)


def test_strict_missing_and_unexpected_keys_are_listed():
    state = to_timm_layout(UnipViTModel(UnipConfig(**TINY)))
    del state["blocks.1.mlp.fc2.weight"]
    state["blocks.0.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(ConversionError) as error:
        convert_timm_state_dict(state, num_attention_heads=2)
    message = str(error.value)
    assert "missing keys (1): ['encoder.layer.1.mlp.fc2.weight']" in message
    assert "blocks.0.attn.rel_pos" in message


def test_shape_mismatch_is_listed():
    state = to_timm_layout(UnipViTModel(UnipConfig(**TINY)))
    with pytest.raises(ConversionError, match="shape mismatches"):
        convert_timm_state_dict(state, config=UnipConfig(**{**TINY, "image_size": 32, "hidden_size": 64}))


def test_three_channel_kernel_into_one_channel_model(pixels):
    source = UnipViTModel(UnipConfig(**TINY, position_embedding_type="learned")).eval()
    converted = convert_timm_state_dict(to_timm_layout(source), num_attention_heads=2, num_channels=1)
    kernel = source.embeddings.patch_embeddings.projection.weight
    torch.testing.assert_close(
        converted.embeddings.patch_embeddings.projection.weight, kernel.sum(dim=1, keepdim=True)
    )
    # a grey image replicated to 3 channels gives the same result as the 1-channel image
    grey = pixels[:, :1]
    with torch.no_grad():
        torch.testing.assert_close(
            converted(grey).last_hidden_state, source(grey.expand(-1, 3, -1, -1)).last_hidden_state,
            atol=1e-5, rtol=1e-5,
        )


def test_from_transformers_vit_matches_source(tmp_path, pixels):
    torch.manual_seed(0)
    source = ViTModel(ViTConfig(**HF_TINY)).eval()
    source.save_pretrained(tmp_path / "vit")
    converted = convert_checkpoint(tmp_path / "vit", tmp_path / "out", "transformers")
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)
    assert converted.config.layer_norm_eps == source.config.layer_norm_eps


def test_from_transformers_vitmae_matches_source(pixels):
    torch.manual_seed(0)
    source = ViTMAEModel(ViTMAEConfig(**HF_TINY, mask_ratio=0.0)).eval()
    converted = convert_transformers_model(source)
    keep_order = torch.arange(16, dtype=torch.float32).expand(2, 16)  # no masking, no shuffling
    with torch.no_grad():
        torch.testing.assert_close(
            converted(pixels).last_hidden_state, source(pixels, noise=keep_order).last_hidden_state
        )


def test_from_transformers_deit_drops_distillation_token():
    torch.manual_seed(0)
    source = DeiTModel(DeiTConfig(**HF_TINY)).eval()
    converted = convert_transformers_model(source)
    torch.testing.assert_close(converted.embeddings.cls_token, source.embeddings.cls_token)
    table = source.embeddings.position_embeddings
    torch.testing.assert_close(
        converted.embeddings.position_embeddings, torch.cat([table[:, :1], table[:, 2:]], dim=1)
    )
    assert converted.embeddings.position_embeddings.shape[1] == 17


def test_timm_clip_tower_layout(pixels):
    """timm's CLIP towers: no patch-embedding bias, a `norm_pre` before the blocks (read from the keys)."""
    source = UnipViTModel(UnipConfig(**TINY, patch_embedding_bias=False, pre_layernorm=True,
                                     position_embedding_type="learned")).eval()
    with torch.no_grad():
        source.embeddings.pre_layernorm.bias.normal_()
    state = to_timm_layout(source)
    assert "norm_pre.bias" in state and "patch_embed.proj.bias" not in state
    converted = convert_timm_state_dict(state, num_attention_heads=2)
    assert converted.config.pre_layernorm and not converted.config.patch_embedding_bias
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).last_hidden_state, source(pixels).last_hidden_state)


def test_unsupported_transformers_model():
    from transformers import BeitConfig, BeitModel

    with pytest.raises(ConversionError, match="model_type 'beit' cannot be converted; the transformers conversion "
                                              "supports vit, vit_mae, deit, dinov2, clip, clip_vision_model"):
        convert_transformers_model(BeitModel(BeitConfig(**HF_TINY)))


def test_cli_convert(tmp_path, capsys):
    source = UnipViTModel(UnipConfig(**TINY, last_layer_num_attention_heads=4))
    torch.save({"model": to_timm_layout(source)}, tmp_path / "ckpt.pth")
    code = cli_main(
        ["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--from", "unip", "--num-heads", "2", "--last-layer-heads", "4"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 blocks, 2 heads (last block 4)" in printed
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:  # a missing local source: one usage line, exit 2 (issue 22)
        cli_main(["convert", str(tmp_path / "nothing.pth"), str(tmp_path / "o2"), "--from", "timm"])
    assert caught.value.code == 2 and "nothing.pth': the local path does not exist" in capsys.readouterr().err
