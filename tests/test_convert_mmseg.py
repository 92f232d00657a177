"""Tests of `unip convert --from mmseg` (issue 20 item 2): mmsegmentation 0.x UNIP segmenters (`meta`, `state_dict`,
`optimizer`; `backbone.` timm-layout ViT with the pyramid ops fpn1..fpn4, `decode_head.` UPerHead, `auxiliary_head.`
FCNHead, mmcv ConvModule `conv` / `bn` names) into `UnipForSemanticSegmentation`, proved by the inverse
(`to_mmseg_state_dict`: one of our segmenters written with mmseg's names converts back to identical logits), and
`--from auto` recognising each layout."""

import json
import os
import sys

import pytest
import torch
from transformers import AutoModelForSemanticSegmentation, ViTConfig, ViTModel

from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipViTModel
from unip_hf.cli import main as cli_main
from unip_hf.conversion.convert import convert, detect_source_format
from unip_hf.conversion.mmseg import parse_mmseg_config, to_mmseg_checkpoint, to_mmseg_state_dict
from unip_hf.conversion.checkpoint_reading import ConversionError

sys.path.insert(0, os.path.dirname(__file__))
from test_convert import TINY, to_timm_layout  # noqa: E402

CLASSES = ("background", "car", "person")
PALETTE = [[0, 0, 0], [0, 0, 142], [220, 20, 60]]


def segmenter(decode_head: str = "ll_fpn", **overrides) -> UnipForSemanticSegmentation:
    """A tiny segmenter whose every weight and batch-norm statistic is far from its initial value."""
    torch.manual_seed(0)
    fields = dict(TINY, num_labels=3, auxiliary_channels=16, decoder_hidden_size=24, decode_head=decode_head,
                  last_layer_num_attention_heads=4, position_embedding_type="learned",
                  id2label=dict(enumerate(CLASSES)), out_indices=[0, 1, 1, 2])
    fields.update(overrides)
    model = UnipForSemanticSegmentation(UnipConfig(**fields)).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point() and "head_index" not in name:
                tensor.normal_(0, 0.2)
    return model


def mmseg_file(tmp_path, model, name="iter_14400.pth", **meta):
    checkpoint = to_mmseg_checkpoint(model)
    checkpoint["meta"].update({"PALETTE": PALETTE, "mmseg_version": "0.11.0", "time": "Mon Dec  7 20:00:00 2026"})
    checkpoint["meta"].update(meta)
    # an mmcv optimizer state (AdamW after a step), as a training run saves it
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter])
    parameter.sum().backward()
    optimizer.step()
    checkpoint["optimizer"] = optimizer.state_dict()
    torch.save(checkpoint, tmp_path / name)
    return tmp_path / name


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_key_has_its_mmseg_name():
    names = set(to_mmseg_state_dict(segmenter()))
    for expected in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
                     "backbone.blocks.2.attn.qkv.weight", "backbone.norm.bias",
                     "backbone.fpn1.0.weight", "backbone.fpn1.1.num_batches_tracked", "backbone.fpn1.3.bias",
                     "backbone.fpn2.0.weight", "decode_head.psp_modules.3.1.conv.weight",
                     "decode_head.psp_modules.0.1.bn.running_var", "decode_head.bottleneck.conv.weight",
                     "decode_head.lateral_convs.2.bn.weight", "decode_head.fpn_convs.0.conv.weight",
                     "decode_head.fpn_bottleneck.bn.running_mean", "decode_head.conv_seg.bias",
                     "auxiliary_head.convs.0.conv.weight", "auxiliary_head.convs.0.bn.num_batches_tracked",
                     "auxiliary_head.conv_seg.weight"):
        assert expected in names, expected
    assert all(name.split(".")[0] in ("backbone", "decode_head", "auxiliary_head") for name in names)
    assert not any(".0.weight" in name for name in names if name.startswith(("decode_head.bottleneck",
                                                                               "auxiliary_head.convs.0.0")))


@pytest.mark.parametrize("decode_head", ["ll_fpn", "multilevel_fpn"])
def test_mmseg_round_trip_gives_identical_logits(tmp_path, pixels, decode_head):
    """The inverse proof: our segmenter written in mmseg layout, saved as an mmseg checkpoint (meta, state_dict,
    optimizer) and converted back gives torch.equal logits; labels from conv_seg, names from meta CLASSES, colours
    from meta PALETTE, heads and out_indices from meta['config']."""
    model = segmenter(decode_head)
    path = mmseg_file(tmp_path, model)
    result = convert(path, "mmseg")
    converted = result.model
    assert (converted.config.decode_head, converted.config.num_labels, converted.config.last_block_heads) == (
        decode_head, 3, 4)
    assert converted.config.id2label == dict(enumerate(CLASSES)) and converted.config.palette == PALETTE
    with torch.no_grad():
        assert torch.equal(converted(pixels).logits, model(pixels).logits)
    # through the command, saved, and reloaded with the Auto class
    assert cli_main(["convert", str(path), str(tmp_path / "out")]) == 0
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, model(pixels).logits)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["palette"] == PALETTE and saved["id2label"] == {"0": "background", "1": "car", "2": "person"}


def test_auto_says_what_it_chose(tmp_path, capsys):
    """--from auto names the layout it recognised; the saved processor takes the source's test img_scale and its
    img_norm_cfg (0-255 units) as 0-1 mean / std."""
    model = segmenter()
    text = to_mmseg_checkpoint(model)["meta"]["config"] + (
        "img_norm_cfg = dict(mean=[96.9255, 96.9255, 96.9255], std=[47.8976, 47.8976, 47.8976], to_rgb=True)\n"
        "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(2048, 512))]\n")
    path = mmseg_file(tmp_path, model, config=text)
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--from", "auto", "--license", "cc-by-nc-4.0"]) == 0
    out = capsys.readouterr().out
    assert f"--from auto: {path} is an mmsegmentation segmenter (backbone.* and decode_head.* keys); converting it " \
           "as --from mmseg" in out
    assert "ll_fpn + UPerNet, 3 classes" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "source_format: mmseg" in card and "| 1 | car |" in card
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["img_scale"] == [2048, 512] and processor["size_divisor"] == 8
    assert processor["image_mean"] == pytest.approx([96.9255 / 255] * 3)
    assert processor["image_std"] == pytest.approx([47.8976 / 255] * 3)


def test_neck_prefix_and_bare_fpn2(tmp_path, pixels):
    """A segmenter whose pyramid sits in a `neck.` (fpn2 a bare transposed convolution) converts the same."""
    model = segmenter()
    checkpoint = to_mmseg_checkpoint(model)
    state = {}
    for key, value in checkpoint["state_dict"].items():
        key = key.replace("backbone.fpn", "neck.fpn").replace("neck.fpn2.0.", "neck.fpn2.")
        state["module." + key] = value  # and a DDP prefix
    checkpoint["state_dict"] = state
    torch.save(checkpoint, tmp_path / "neck.pth")
    with torch.no_grad():
        assert torch.equal(convert(tmp_path / "neck.pth", "auto").model(pixels).logits, model(pixels).logits)


def test_strict_keys_named_as_mmseg_names_them(tmp_path):
    checkpoint = to_mmseg_checkpoint(segmenter())
    del checkpoint["state_dict"]["decode_head.fpn_convs.1.bn.running_mean"]
    checkpoint["state_dict"]["decode_head.dsn.0.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "bad.pth", "mmseg")
    message = str(error.value)
    assert "missing keys (1): ['decode_head.fpn_convs.1.bn.running_mean']" in message
    assert "unexpected keys (1): ['decode_head.dsn.0.weight']" in message


def test_relative_position_bias_and_use_norm_are_refused(tmp_path):
    checkpoint = to_mmseg_checkpoint(segmenter())
    checkpoint["state_dict"]["backbone.blocks.0.attn.relative_position_bias_table"] = torch.zeros(52, 2)
    torch.save(checkpoint, tmp_path / "relpos.pth")
    with pytest.raises(ConversionError, match="relative position bias .*absolute position embeddings only"):
        convert(tmp_path / "relpos.pth", "mmseg")
    checkpoint = to_mmseg_checkpoint(segmenter())
    checkpoint["meta"]["config"] = checkpoint["meta"]["config"].replace("use_norm=False", "use_norm=True")
    torch.save(checkpoint, tmp_path / "norm.pth")
    with pytest.raises(ConversionError, match="use_norm=True"):
        convert(tmp_path / "norm.pth", "mmseg")


def test_without_meta_config_the_assumptions_are_said(tmp_path, pixels):
    """No meta['config']: heads from the flags, LL-FPN assumed and said; --out_indices names the tapped blocks."""
    model = segmenter("multilevel_fpn")
    checkpoint = to_mmseg_checkpoint(model)
    checkpoint["meta"] = {"CLASSES": CLASSES}
    torch.save(checkpoint, tmp_path / "bare.pth")
    assumed = convert(tmp_path / "bare.pth", "mmseg", num_attention_heads=2, last_layer_num_attention_heads=4)
    assert assumed.model.config.decode_head == "ll_fpn"
    assert any("assumed LL-FPN" in note for note in assumed.notes)
    told = convert(tmp_path / "bare.pth", "mmseg", out_indices=[0, 1, 1, 2], num_attention_heads=2,
                   last_layer_num_attention_heads=4)
    with torch.no_grad():
        assert torch.equal(told.model(pixels).logits, model(pixels).logits)


def test_parse_mmseg_config_reads_the_official_shapes():
    text = ("norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(type='EncoderDecoder', backbone=dict("
            "type='MAE', img_size=512, patch_size=16, embed_dim=384, depth=12, num_heads=6, out_indices=[11, 11, 11, "
            "11], use_norm=False), decode_head=dict(type='UPerHead', in_channels=[384, 384, 384, 384], "
            "pool_scales=(1, 2, 3, 6), channels=384))\nimg_norm_cfg = dict(mean=[96.9255, 96.9255, 96.9255], "
            "std=[47.8976, 47.8976, 47.8976], to_rgb=True)\ntest_pipeline = [dict(type='LoadImageFromFile'), dict("
            "type='MultiScaleFlipAug', img_scale=(2048, 512), flip=False)]")
    assert parse_mmseg_config(text) == {
        "num_heads": 6, "out_indices": [11, 11, 11, 11], "use_norm": False, "pool_scales": [1, 2, 3, 6],
        "mean": [96.9255] * 3, "std": [47.8976] * 3, "img_scale": (2048, 512)}


def test_auto_recognises_each_layout(tmp_path):
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(tmp_path / "vit")
    assert detect_source_format(tmp_path / "vit")[0] == "transformers"
    UnipViTModel(UnipConfig(**TINY)).save_pretrained(tmp_path / "unip")
    with pytest.raises(ConversionError, match="is already a UNIP model folder"):
        detect_source_format(tmp_path / "unip")
    torch.save({"model": to_timm_layout(UnipViTModel(UnipConfig(**TINY)))}, tmp_path / "timm.pth")
    assert detect_source_format(tmp_path / "timm.pth")[0] == "timm"
    assert detect_source_format(mmseg_file(tmp_path, segmenter()))[0] == "mmseg"
    assert detect_source_format("facebook/vit-mae-base")[0] == "transformers"
