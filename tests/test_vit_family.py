"""Tests of the ViT-family adapters (`unip_hf.models.vit_family`) that the attention analysis and the NMI-HAD teacher share:
which module takes the pixel values, the special tokens before the patches, and the two readers agreeing."""

import pytest
import torch
import transformers as T
from torch import nn

from unip_hf.pretraining.distillation import AttentionTeacher
from unip_hf.models.vit_family import eager_attention, model_attentions, num_prefix_tokens, select_tokens, vision_tower

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8)
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}


def tiny_clip():
    torch.manual_seed(0)
    return T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=VISION)).eval()


def test_vision_tower_follows_the_config_not_the_attributes():
    clip = tiny_clip()
    assert vision_tower(clip) is clip.vision_model  # composite config: its vision tower
    vision_only = T.CLIPVisionModel(T.CLIPVisionConfig(**VISION))
    assert vision_tower(vision_only) is vision_only
    # A vision model that keeps its tower in a `vision_model` attribute is called whole (the teacher used to
    # unwrap it to a bare nn.Module because it has no `embeddings` attribute).
    owl = T.OwlViTVisionModel(T.OwlViTVisionConfig(**VISION))
    assert vision_tower(owl) is owl


def test_dual_encoder_with_top_level_embeddings_is_unwrapped_by_the_teacher():
    """The teacher's old rule ("has `vision_model` and no `embeddings`") kept a dual encoder with text embeddings at
    its top level whole and failed on its config (no patch_size); the config rule finds the tower."""
    clip = tiny_clip()
    clip.embeddings = nn.Embedding(4, 4)  # e.g. text embeddings stored at the top
    x = torch.randn(2, 3, 32, 32)
    teacher = AttentionTeacher(clip, 1)
    assert teacher.family == "clip_vision_model"
    torch.testing.assert_close(teacher(x), AttentionTeacher(clip.vision_model, 1)(x))


def test_analysis_and_teacher_read_a_model_alike():
    torch.manual_seed(0)
    owl = T.OwlViTVisionModel(T.OwlViTVisionConfig(**VISION)).eval()
    x = torch.randn(2, 3, 32, 32)
    with eager_attention(owl):
        attentions, prefix, grid = model_attentions(owl, x)
    assert (prefix, grid) == (1, (4, 4))
    probs = AttentionTeacher(owl, 1)(x).softmax(-1)
    torch.testing.assert_close(probs, attentions[1], atol=1e-5, rtol=1e-4)


def test_special_tokens_cls_kept_registers_dropped():
    tokens = torch.arange(1 + 2 + 16).float()  # CLS, 2 registers, 4x4 patches
    maps = tokens[:, None] * 100 + tokens[None, :]
    prefix = num_prefix_tokens(maps.shape[-1], (4, 4))
    assert prefix == 3
    kept = select_tokens(maps, prefix)
    assert kept.shape == (17, 17) and kept[0, 0] == 0 and kept[1, 1] == 303
    patches = select_tokens(maps, prefix, include_cls=False)
    assert patches.shape == (16, 16) and patches[0, 0] == 303
    assert select_tokens(tokens[None, :, None], prefix, dims=(1,)).shape == (1, 17, 1)
    with pytest.raises(RuntimeError, match="some patches were dropped"):
        num_prefix_tokens(10, (4, 4))
    with pytest.raises(RuntimeError, match="no CLS token"):
        num_prefix_tokens(16, (4, 4), require_cls=True)
