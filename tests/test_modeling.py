"""Tests of UnipConfig, UnipViTModel, UnipBackbone and UnipForSemanticSegmentation on tiny configurations, in the
pattern of transformers' model tests: `UnipModelTester` builds the configurations and inputs and holds one
`create_and_check_*` per behaviour; `ModelTesterMixin` runs the checks every model class must pass (tuples equal to
the output dataclass, batching equivalence, save/load round trip, SDPA and eager agreeing), and each model class has
its test class (the segmentation one once per decode head)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation
from transformers.modeling_outputs import BackboneOutput, SemanticSegmenterOutput
from transformers.utils import ModelOutput

import unip_hf
from unip_hf import UnipBackbone, UnipConfig, UnipForSemanticSegmentation, UnipViTModel
from unip_hf.models import modeling_unip
from unip_hf.models.modeling_unip import UnipModelOutput, sincos_position_embedding

DECODE_HEADS = ("ll_fpn", "multilevel_fpn", "linear_probe")


def assert_outputs_close(actual, expected, path="output", **tolerances):
    """Recursive comparison of model outputs (tensors, tuples of them, ints and `None`), naming the differing entry."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual).__name__} instead of a tensor"
        torch.testing.assert_close(actual, expected, msg=lambda message: f"{path}: {message}", **tolerances)
    elif isinstance(expected, (tuple, list)):
        count = len(actual) if isinstance(actual, (tuple, list)) else repr(actual)
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), (
            f"{path}: {count} entries, expected {len(expected)}")
        for index, (got, want) in enumerate(zip(actual, expected)):
            assert_outputs_close(got, want, f"{path}[{index}]", **tolerances)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


class UnipModelTester:
    """Builds tiny configurations and inputs (hidden 32, 4 blocks, 32 px images, patch 8) and checks the behaviours of
    the UNIP model classes, one `create_and_check_*` per behaviour."""

    def __init__(self, batch_size=2, image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, heads=2,
                 num_labels=3):
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.heads = heads
        self.num_labels = num_labels
        self.grid = image_size // patch_size
        self.seq_len = self.grid**2 + 1

    def get_config(self, **overrides):
        values = dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.heads,
            num_labels=self.num_labels,
            auxiliary_channels=16,
        )
        values.update(overrides)
        return UnipConfig(**values)

    def pixel_values(self, channels=3, size=None):
        size = size or self.image_size
        return torch.randn(self.batch_size, channels, size, size, generator=torch.Generator().manual_seed(0))

    def labels(self, size=None, num_labels=3):
        size = size or self.image_size
        return torch.randint(0, num_labels, (self.batch_size, size, size), generator=torch.Generator().manual_seed(1))

    def prepare_config_and_inputs(self, **overrides):
        """A configuration, normalised images and label maps."""
        return self.get_config(**overrides), self.pixel_values(), self.labels(num_labels=self.num_labels)

    @staticmethod
    def build(model_class, config):
        torch.manual_seed(0)
        return model_class(config).eval()

    @staticmethod
    def model_inputs(model_class, pixel_values, labels=None):
        """The forward inputs of `model_class`: labels only for the segmentation model (its loss)."""
        inputs = {"pixel_values": pixel_values}
        if labels is not None and model_class is UnipForSemanticSegmentation:
            inputs["labels"] = labels
        return inputs

    # --- shapes of each model class --------------------------------------------------------------------------------

    def create_and_check_model(self, config, pixel_values):
        """`UnipViTModel`: sequence and pooled shapes, one hidden state per block plus the embeddings, attention
        probabilities summing to one, `return_dict=False` starting with the sequence."""
        model = self.build(UnipViTModel, config)
        batch, width = pixel_values.shape[0], config.hidden_size
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
        assert isinstance(out, UnipModelOutput)
        assert out.last_hidden_state.shape == (batch, self.seq_len, width)
        assert out.pooler_output.shape == (batch, width)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert all(h.shape == (batch, self.seq_len, width) for h in out.hidden_states)
        assert len(out.attentions) == config.num_hidden_layers
        heads = config.num_attention_heads
        assert out.attentions[0].shape == (batch, heads, self.seq_len, self.seq_len)
        assert out.attentions[-1].shape == (batch, config.last_block_heads, self.seq_len, self.seq_len)
        torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(batch, heads, self.seq_len))
        as_tuple = model(pixel_values, return_dict=False)
        torch.testing.assert_close(as_tuple[0], out.last_hidden_state)

    def create_and_check_backbone(self, config, pixel_values):
        """`UnipBackbone`: one `(batch, hidden, H/p, W/p)` map per `out_features` entry, nothing else unless asked."""
        model = self.build(UnipBackbone, config)
        batch = pixel_values.shape[0]
        out = model(pixel_values)
        assert isinstance(out, BackboneOutput) and out.hidden_states is None and out.attentions is None
        assert len(out.feature_maps) == len(config.out_features) == len(model.channels)
        for feature_map, channels in zip(out.feature_maps, model.channels):
            assert feature_map.shape == (batch, channels, self.grid, self.grid)
        everything = model(pixel_values, output_hidden_states=True, output_attentions=True)
        assert len(everything.hidden_states) == config.num_hidden_layers + 1
        assert len(everything.attentions) == config.num_hidden_layers
        assert_outputs_close(everything.feature_maps, out.feature_maps, "feature_maps", atol=1e-5, rtol=1e-5)

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels, logit_size):
        """`UnipForSemanticSegmentation`: logits of `logit_size` pixels a side, a finite loss whose gradient reaches
        the classifier."""
        model = UnipForSemanticSegmentation(config)
        out = model(pixel_values, labels=labels)
        assert isinstance(out, SemanticSegmenterOutput)
        assert out.logits.shape == (pixel_values.shape[0], config.num_labels, logit_size, logit_size)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert model.decode_head.classifier.weight.grad is not None

    # --- behaviours every model class shares -----------------------------------------------------------------------

    def create_and_check_tuple_outputs(self, model_class, config, pixel_values, labels, forward_kwargs=({},)):
        """`return_dict=False` returns exactly the output dataclass's `to_tuple()` (its fields that are not `None`,
        in order), with and without hidden states and attentions and for each extra set of forward arguments."""
        model = self.build(model_class, config)
        inputs = self.model_inputs(model_class, pixel_values, labels)
        for extra in forward_kwargs:
            for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True},
                          {"output_hidden_states": True, "output_attentions": True}):
                kwargs = {**inputs, **extra, **flags}
                with torch.no_grad():
                    as_dict = model(**kwargs, return_dict=True)
                    as_tuple = model(**kwargs, return_dict=False)
                assert isinstance(as_dict, ModelOutput) and isinstance(as_tuple, tuple)
                assert_outputs_close(as_tuple, as_dict.to_tuple(), f"{model_class.__name__}({sorted(kwargs)})")

    def create_and_check_batching_equivalence(self, model_class, config, pixel_values):
        """Each sample's outputs are the same alone as in a batch (within float tolerance)."""
        model = self.build(model_class, config)
        flags = {"output_hidden_states": True, "output_attentions": True}
        with torch.no_grad():
            batched = model(pixel_values, **flags).to_tuple()
            singles = [model(pixel_values[i : i + 1], **flags).to_tuple() for i in range(pixel_values.shape[0])]

        def join(entries):  # per-sample outputs stacked like the batched ones; plain values (layer counts) shared
            if isinstance(entries[0], torch.Tensor):
                return torch.cat(entries)
            if isinstance(entries[0], (tuple, list)):
                return type(entries[0])(join(list(parts)) for parts in zip(*entries))
            assert all(entry == entries[0] for entry in entries), entries
            return entries[0]

        for index, batched_entry in enumerate(batched):
            joined = join([single[index] for single in singles])
            assert_outputs_close(batched_entry, joined, f"{model_class.__name__} output[{index}]", atol=1e-5,
                                 rtol=1e-4)

    def create_and_check_save_load(self, model_class, config, pixel_values, directory):
        """`save_pretrained` then `from_pretrained` gives the same configuration, weights and outputs, with no
        missing, unexpected or mismatched keys."""
        model = self.build(model_class, config)
        model.save_pretrained(directory)
        loaded, info = model_class.from_pretrained(directory, output_loading_info=True)
        loaded.eval()
        assert type(loaded) is model_class
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        ignored = {"_name_or_path", "transformers_version", "architectures", "auto_map"}
        original = {k: v for k, v in model.config.to_dict().items() if k not in ignored}
        assert {k: v for k, v in loaded.config.to_dict().items() if k not in ignored} == original
        saved, reloaded = model.state_dict(), loaded.state_dict()
        assert saved.keys() == reloaded.keys()
        for key in saved:
            torch.testing.assert_close(reloaded[key], saved[key], rtol=0, atol=0, msg=key)
        with torch.no_grad():
            assert_outputs_close(loaded(pixel_values).to_tuple(), model(pixel_values).to_tuple(), rtol=0, atol=0)

    def create_and_check_attention_implementations(self, model_class, config, pixel_values):
        """SDPA (the default) and the eager path give the same outputs, attention probabilities included."""
        model = self.build(model_class, config)
        assert model.config._attn_implementation == "sdpa"
        flags = {"output_hidden_states": True}
        with torch.no_grad():
            sdpa = model(pixel_values, **flags).to_tuple()
            sdpa_attentions = model(pixel_values, output_attentions=True).attentions
            model.set_attn_implementation("eager")
            assert model.config._attn_implementation == "eager"
            eager = model(pixel_values, **flags).to_tuple()
            eager_attentions = model(pixel_values, output_attentions=True).attentions
        assert_outputs_close(eager, sdpa, f"{model_class.__name__} eager vs sdpa", atol=1e-5, rtol=1e-5)
        assert_outputs_close(eager_attentions, sdpa_attentions, "attentions", atol=1e-6, rtol=1e-5)


@pytest.fixture
def tester():
    torch.manual_seed(0)
    return UnipModelTester()


class ModelTesterMixin:
    """The checks every UNIP model class passes. A subclass names `model_class`, may override the `config_overrides`
    fixture (parametrised to run every check once per configuration) and the extra `forward_kwargs` of the tuple
    check."""

    model_class = None
    forward_kwargs = ({},)

    @pytest.fixture
    def config_overrides(self):
        return {}

    @pytest.fixture
    def prepared(self, tester, config_overrides):
        return tester.prepare_config_and_inputs(**config_overrides)

    def test_tuple_outputs_match_the_dataclass(self, tester, prepared):
        config, pixel_values, labels = prepared
        tester.create_and_check_tuple_outputs(self.model_class, config, pixel_values, labels, self.forward_kwargs)

    def test_batching_equivalence(self, tester, prepared):
        config, pixel_values, _ = prepared
        tester.create_and_check_batching_equivalence(self.model_class, config, pixel_values)

    def test_save_load_round_trip(self, tester, prepared, tmp_path):
        config, pixel_values, _ = prepared
        tester.create_and_check_save_load(self.model_class, config, pixel_values, tmp_path / "saved")

    def test_sdpa_and_eager_agree(self, tester, prepared):
        config, pixel_values, _ = prepared
        tester.create_and_check_attention_implementations(self.model_class, config, pixel_values)


# --- configuration ---------------------------------------------------------------------------------------------


class TestUnipConfig:
    @pytest.mark.parametrize(
        "name,width,depth,heads",
        [("unip-tiny", 192, 12, 3), ("unip-small", 384, 12, 6), ("unip-base", 768, 12, 12),
         ("unip-large", 1024, 24, 16)],
    )
    def test_presets(self, name, width, depth, heads):
        config = UnipConfig.from_preset(name)
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
        assert config.last_block_heads == heads
        assert config.model_type == "unip"

    def test_preset_overrides_and_short_name(self):
        config = UnipConfig.from_preset("tiny", last_layer_num_attention_heads=16, num_channels=1)
        assert config.hidden_size == 192 and config.last_block_heads == 16 and config.num_channels == 1
        assert config.num_heads_of_layer(0) == 3 and config.num_heads_of_layer(11) == 16
        with pytest.raises(ValueError, match="Unknown UNIP preset"):
            UnipConfig.from_preset("huge")

    @pytest.mark.parametrize(
        "overrides,message",
        [
            ({"num_channels": 5}, "num_channels must be 1 or 3"),
            ({"image_size": 30}, "not a multiple of patch_size"),
            ({"num_attention_heads": 5}, "not divisible by num_attention_heads"),
            ({"last_layer_num_attention_heads": 5}, "last_layer_num_attention_heads"),
            ({"decode_head": "segformer"}, "decode_head must be one of"),
            ({"position_embedding_type": "rope"}, "position_embedding_type"),
            ({"out_indices": [0, 9]}, "out of range"),
        ],
    )
    def test_config_validation(self, tester, overrides, message):
        with pytest.raises(ValueError, match=message):
            tester.get_config(**overrides)

    def test_config_round_trip(self, tmp_path, tester):
        config = tester.get_config(last_layer_num_attention_heads=4, layer_scale_init_value=0.1,
                                   out_indices=[0, 1, 2, 3])
        config.save_pretrained(tmp_path)
        loaded = AutoConfig.from_pretrained(tmp_path)
        assert isinstance(loaded, UnipConfig)
        for field in ("last_layer_num_attention_heads", "layer_scale_init_value", "out_indices", "pool_scales"):
            assert getattr(loaded, field) == getattr(config, field)

    def test_default_out_indices(self):
        assert UnipConfig().feature_indices == [3, 5, 7, 11]
        assert UnipConfig.from_preset("large").feature_indices == [7, 11, 15, 23]
        assert UnipConfig(num_hidden_layers=8).feature_indices == [1, 3, 5, 7]

    def test_backbone_config_out_indices_and_features(self, tester):
        config = tester.get_config()
        assert config.stage_names == ["stage1", "stage2", "stage3", "stage4"]
        assert config.out_indices == [0, 1, 2, 3] and config.out_features == config.stage_names  # default_out_indices
        by_name = tester.get_config(out_features=["stage2", "stage4"])
        assert by_name.out_indices == [1, 3]
        assert tester.get_config(out_indices=[0, 1, 1, 1]).out_features == ["stage1", "stage2", "stage2", "stage2"]
        assert UnipConfig().out_indices == [3, 5, 7, 11] and UnipConfig().out_features[0] == "stage4"
        with pytest.raises(ValueError, match="block order"):
            tester.get_config(out_indices=[2, 1])
        with pytest.raises(ValueError, match="not stages"):
            tester.get_config(out_features=["stem"])
        with pytest.raises(ValueError, match="name different blocks"):
            tester.get_config(out_indices=[1], out_features=["stage1"])


# --- models ------------------------------------------------------------------------------------------------------


class TestUnipViTModel(ModelTesterMixin):
    model_class = UnipViTModel
    # attention logits of chosen blocks, and an early stop (no final norm, no pooled output)
    forward_kwargs = ({}, {"attention_logits_layers": [3, 1]}, {"stop_after_layer": 1, "attention_logits_layers": [1]})

    def test_model(self, tester):
        config, pixel_values, _ = tester.prepare_config_and_inputs()
        tester.create_and_check_model(config, pixel_values)
        tester.create_and_check_model(tester.get_config(last_layer_num_attention_heads=4), pixel_values)

    def test_eager_requested_at_load(self, tmp_path, tester):
        model = UnipViTModel(tester.get_config()).eval()
        model.save_pretrained(tmp_path)
        eager = UnipViTModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
        assert eager.config._attn_implementation == "eager"
        pixels = tester.pixel_values()
        torch.testing.assert_close(model(pixels).last_hidden_state, eager(pixels).last_hidden_state, atol=1e-5,
                                   rtol=1e-5)

    def test_attention_logits_match_probabilities(self, tester):
        model = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4)).eval()
        out = model(tester.pixel_values(), output_attentions=True, attention_logits_layers=[-1, 1])
        last, second = out.attention_logits
        assert last.shape == (2, 4, tester.seq_len, tester.seq_len)
        assert second.shape == (2, 2, tester.seq_len, tester.seq_len)
        torch.testing.assert_close(last.softmax(-1), out.attentions[-1])
        torch.testing.assert_close(second.softmax(-1), out.attentions[1])

    def test_explicit_attention_only_for_requested_layers(self, tester, monkeypatch):
        calls = []
        original = modeling_unip.attention_scores

        def counting(query, *args, **kwargs):
            calls.append(query.shape[1])  # heads of the block that built an N x N score matrix
            return original(query, *args, **kwargs)

        monkeypatch.setattr(modeling_unip, "attention_scores", counting)
        model = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4)).eval()
        out = model(tester.pixel_values(), attention_logits_layers=[3])
        assert calls == [4]  # the last block only; the others ran SDPA
        assert out.attention_logits[0].requires_grad  # logits carry gradients (distillation trains through them)

    def test_attention_returns_logits_without_side_channel(self, tester):
        """The attention module returns its logits (no attribute set on it during forward, no second computation):
        the explicit path, the logits-only path and the eager attention function agree."""
        model = UnipViTModel(tester.get_config()).eval()
        attention = model.encoder.layer[0].attention
        hidden = torch.randn(2, tester.seq_len, 32)
        state = set(vars(attention))
        output, probs, logits = attention(hidden, output_attentions=True, output_attention_logits=True)
        assert set(vars(attention)) == state
        torch.testing.assert_close(probs, logits.softmax(-1))
        assert attention(hidden, logits_only=True)[:2] == (None, None)
        torch.testing.assert_close(attention(hidden, logits_only=True)[2], logits)
        sdpa_output, no_probs, no_logits = attention(hidden)
        assert no_probs is None and no_logits is None
        torch.testing.assert_close(sdpa_output, output, atol=1e-6, rtol=1e-5)
        # eager_attention_forward keeps transformers' signature and returns (output, probabilities)
        query, key, value = attention.project(hidden)
        eager_out, eager_probs = modeling_unip.eager_attention_forward(attention, query, key, value, None,
                                                                       attention.scaling, 0.0)
        torch.testing.assert_close(eager_probs, probs)
        torch.testing.assert_close(attention.proj(eager_out.reshape(2, tester.seq_len, -1)), output)

    def test_registered_attention_function_is_used(self, tester):
        """`_supports_attention_backend`: a function registered with transformers' AttentionInterface runs when asked
        for, with transformers' calling convention."""
        from transformers import AttentionInterface

        calls = []

        def custom(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            calls.append(type(module).__name__)
            return modeling_unip.eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)

        AttentionInterface.register("unip_test_attention", custom)
        model = UnipViTModel(tester.get_config()).eval()
        pixels = tester.pixel_values()
        reference = model(pixels).last_hidden_state
        model.set_attn_implementation("unip_test_attention")
        torch.testing.assert_close(model(pixels).last_hidden_state, reference, atol=1e-5, rtol=1e-5)
        assert calls == ["UnipSelfAttention"] * tester.num_hidden_layers

    def test_attention_logits_method_computes_only_what_is_needed(self, tester):
        model = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4)).eval()
        pixels = tester.pixel_values()
        reference = model(pixels, attention_logits_layers=[1, 3]).attention_logits
        called = []
        last = model.encoder.layer[-1]
        for name in ("mlp", "norm2"):
            getattr(last, name).register_forward_hook(lambda *_, n=name: called.append(n))
        last.attention.proj.register_forward_hook(lambda *_: called.append("proj"))
        model.layernorm.register_forward_hook(lambda *_: called.append("final norm"))
        deep, shallow = model.attention_logits(pixels, [-1, 1])
        assert called == []  # neither the last block's values/projection/MLP nor the final norm ran
        torch.testing.assert_close(deep, reference[1])
        torch.testing.assert_close(shallow, reference[0])
        assert deep.shape == (2, 4, tester.seq_len, tester.seq_len)
        deep.sum().backward()  # trainable: gradients reach the query/key rows of the last block
        grad = last.attention.qkv.weight.grad
        assert grad[:64].abs().sum() > 0 and grad[64:].abs().sum() == 0

    def test_stop_after_layer_runs_fewer_blocks(self, tester):
        model = UnipViTModel(tester.get_config()).eval()
        seen = []
        for index, layer in enumerate(model.encoder.layer):
            layer.register_forward_hook(lambda *_, i=index: seen.append(i))
        pixels = tester.pixel_values()
        full = model(pixels, output_hidden_states=True)
        seen.clear()
        early = model(pixels, stop_after_layer=1, attention_logits_layers=[1])
        assert seen == [0, 1]
        assert early.num_layers_run == 2 and early.pooler_output is None
        torch.testing.assert_close(early.last_hidden_state, full.hidden_states[2])
        with pytest.raises(ValueError, match="after stop_after_layer"):
            model(pixels, stop_after_layer=1, attention_logits_layers=[2])
        with pytest.raises(ValueError, match="out of range"):
            model(pixels, stop_after_layer=7)

    def test_forward_intermediates(self, tester):
        model = UnipViTModel(tester.get_config()).eval()
        pixels = torch.randn(2, 3, 32, 48)
        full = model(pixels, output_hidden_states=True)
        seen = []
        for index, layer in enumerate(model.encoder.layer):
            layer.register_forward_hook(lambda *_, i=index: seen.append(i))
        maps = model.forward_intermediates(pixels, [2, 0, 2])
        assert seen == [0, 1, 2]  # stop_early: nothing after the deepest requested block
        assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 6)] * 3
        expected = full.hidden_states[3][:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(maps[0], expected)
        torch.testing.assert_close(maps[1], full.hidden_states[1][:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2))
        seen.clear()
        tokens = model.forward_intermediates(pixels, 2, output_fmt="NLC", norm=True, return_prefix_tokens=True)
        assert seen == [0, 1, 2, 3] and len(tokens) == 2  # the last 2 blocks
        patches, cls = tokens[1]
        torch.testing.assert_close(torch.cat([cls, patches], dim=1), full.last_hidden_state)  # last block, final norm
        assert len(model.forward_intermediates(pixels)) == tester.num_hidden_layers
        output, maps = model.forward_intermediates(pixels, [1], stop_early=False, intermediates_only=False,
                                                   output_hidden_states=True)
        torch.testing.assert_close(output.last_hidden_state, full.last_hidden_state)
        assert len(output.hidden_states) == 5
        early, _ = model.forward_intermediates(pixels, [1], intermediates_only=False)
        torch.testing.assert_close(early.last_hidden_state, model(pixels, stop_after_layer=1).last_hidden_state)
        assert early.pooler_output is None and early.num_layers_run == 2
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(pixels, [4])
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(pixels, [1], output_fmt="NHWC")

    def test_interpolate_position_embeddings(self, tester):
        config = tester.get_config()
        model = UnipViTModel(config).eval()
        table = model.embeddings.position_embeddings
        torch.testing.assert_close(table, sincos_position_embedding(32, 4, 4))
        assert not table.requires_grad
        # sin-cos: recomputed exactly for a new grid
        torch.testing.assert_close(model.embeddings.interpolate_pos_encoding(6, 8), sincos_position_embedding(32, 6, 8))
        out = model(torch.randn(1, 3, 48, 64))
        assert out.last_hidden_state.shape == (1, 1 + 6 * 8, 32)
        learned = UnipViTModel(tester.get_config(position_embedding_type="learned")).eval()
        assert learned.embeddings.position_embeddings.requires_grad
        assert learned(torch.randn(1, 3, 40, 24)).last_hidden_state.shape == (1, 1 + 5 * 3, 32)

    def test_sincos_table_stays_fixed_through_save_and_load(self, tmp_path, tester):
        """The fixed sin-cos table is no parameter (not trained, not seen by optimizers or DDP), before and after
        `from_pretrained`, and it keeps its checkpoint key, so checkpoints load both ways without load warnings."""
        key = "unip.embeddings.position_embeddings"
        model = UnipForSemanticSegmentation(tester.get_config())
        assert key not in dict(model.named_parameters()) and key in model.state_dict()
        model.save_pretrained(tmp_path / "seg")
        from safetensors.torch import load_file

        torch.testing.assert_close(load_file(str(tmp_path / "seg" / "model.safetensors"))[key],
                                   sincos_position_embedding(32, 4, 4))
        for cls, prefix in ((UnipForSemanticSegmentation, "unip."), (UnipViTModel, "")):
            loaded, info = cls.from_pretrained(tmp_path / "seg", output_loading_info=True)
            assert not info["missing_keys"] and not info["mismatched_keys"], info
            assert not [k for k in info["unexpected_keys"] if "position" in k], info
            names = dict(loaded.named_parameters())
            assert prefix + "embeddings.position_embeddings" not in names, cls
            assert all(p.requires_grad for p in names.values())  # everything else still trains
            torch.testing.assert_close(loaded.get_submodule(prefix + "embeddings").position_embeddings,
                                       sincos_position_embedding(32, 4, 4))
        # at another input size the exact table for that grid is used
        loaded = UnipViTModel.from_pretrained(tmp_path / "seg")
        torch.testing.assert_close(loaded.embeddings.interpolate_pos_encoding(3, 5),
                                   sincos_position_embedding(32, 3, 5))
        # a learned table stays a trainable parameter through a save and load
        learned = UnipViTModel(tester.get_config(position_embedding_type="learned"))
        learned.save_pretrained(tmp_path / "learned")
        reloaded = UnipViTModel.from_pretrained(tmp_path / "learned")
        assert dict(reloaded.named_parameters())["embeddings.position_embeddings"].requires_grad
        torch.testing.assert_close(reloaded.embeddings.position_embeddings, learned.embeddings.position_embeddings)

    def test_input_errors(self, tester):
        model = UnipViTModel(tester.get_config()).eval()
        with pytest.raises(ValueError, match="not a multiple of the patch size"):
            model(torch.randn(1, 3, 30, 32))
        with pytest.raises(ValueError, match="num_channels=3"):
            model(torch.randn(1, 1, 32, 32))
        one_channel = UnipViTModel(tester.get_config(num_channels=1)).eval()
        assert one_channel(torch.randn(1, 1, 32, 32)).last_hidden_state.shape[1] == tester.seq_len

    def test_layer_scale_and_drop_path(self, tester):
        model = UnipViTModel(tester.get_config(layer_scale_init_value=1e-5, drop_path_rate=0.2))
        assert torch.allclose(model.encoder.layer[0].layer_scale1.lambda1, torch.full((32,), 1e-5))
        rates = [layer.drop_path.drop_prob for layer in model.encoder.layer[1:]]
        assert rates == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
        model.train()
        model(tester.pixel_values()).last_hidden_state.sum().backward()
        model.eval()
        first = model(tester.pixel_values()).last_hidden_state
        torch.testing.assert_close(first, model(tester.pixel_values()).last_hidden_state)

    def test_gradient_checkpointing(self, tester):
        model = UnipViTModel(tester.get_config())
        model.gradient_checkpointing_enable()
        model.train()
        model(tester.pixel_values()).last_hidden_state.mean().backward()
        assert model.encoder.layer[0].attention.qkv.weight.grad is not None

    def test_last_block_head_count_survives_save_load_and_finetune(self, tmp_path, tester):
        backbone = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4, num_labels=2))
        assert backbone.encoder.layer[-1].attention.num_heads == 4
        assert backbone.encoder.layer[0].attention.num_heads == 2
        backbone.save_pretrained(tmp_path / "backbone")
        loaded = AutoModel.from_pretrained(tmp_path / "backbone")
        assert loaded.encoder.layer[-1].attention.num_heads == 4
        segmenter = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "backbone")
        assert segmenter.unip.encoder.layer[-1].attention.num_heads == 4
        torch.testing.assert_close(
            segmenter.unip.encoder.layer[-1].attention.qkv.weight, backbone.encoder.layer[-1].attention.qkv.weight
        )

    def test_head_count_mismatch_is_an_error(self, tmp_path, tester):
        """The head count travels with the weights as the length of each block's `head_index` buffer: loading into a
        block built with another count is a size mismatch that transformers and torch refuse, naming the key (no
        `from_pretrained` override)."""
        backbone = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4))
        assert backbone.state_dict()["encoder.layer.3.attention.head_index"].tolist() == [0, 1, 2, 3]
        backbone.save_pretrained(tmp_path)
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # after a load report naming the key
            AutoModel.from_pretrained(tmp_path, last_layer_num_attention_heads=2)
        other = UnipViTModel(tester.get_config(last_layer_num_attention_heads=2))
        with pytest.raises(RuntimeError, match=r"size mismatch for encoder\.layer\.3\.attention\.head_index"):
            other.load_state_dict(backbone.state_dict())

    def test_checkpoint_with_the_older_scalar_head_count_loads(self, tmp_path, tester):
        """Checkpoints saved before `head_index` carry a scalar `head_count` per block: they still load (that key
        ignored, `head_index` filled from the configuration) with identical weights and outputs."""
        from safetensors.torch import load_file, save_file

        model = UnipViTModel(tester.get_config(last_layer_num_attention_heads=4)).eval()
        model.save_pretrained(tmp_path)
        weights = load_file(tmp_path / "model.safetensors")
        old = {}
        for key, value in weights.items():
            if key.endswith(".head_index"):
                old[key.replace(".head_index", ".head_count")] = torch.tensor(len(value))
            else:
                old[key] = value
        save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
        loaded, info = UnipViTModel.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        assert loaded.encoder.layer[3].attention.head_index.tolist() == [0, 1, 2, 3]
        from unip_hf.evaluation.model_saving import load_segmentation_model

        segmenter = UnipForSemanticSegmentation(tester.get_config(last_layer_num_attention_heads=4))
        segmenter.save_pretrained(tmp_path / "segmenter")
        weights = load_file(tmp_path / "segmenter" / "model.safetensors")
        save_file({(k.replace(".head_index", ".head_count") if k.endswith(".head_index") else k):
                   (torch.tensor(len(v)) if k.endswith(".head_index") else v) for k, v in weights.items()},
                  tmp_path / "segmenter" / "model.safetensors", metadata={"format": "pt"})
        # what `unip evaluate` / `unip predict` load with: no "missing weights" refusal for an older checkpoint
        assert load_segmentation_model(str(tmp_path / "segmenter")).unip.encoder.layer[3].attention.num_heads == 4
        pixels = tester.pixel_values()
        with torch.no_grad():
            assert torch.equal(loaded(pixels).last_hidden_state, model(pixels).last_hidden_state)


class TestUnipBackbone(ModelTesterMixin):
    model_class = UnipBackbone

    @pytest.fixture
    def config_overrides(self):
        return {"out_indices": [1, 3], "last_layer_num_attention_heads": 4}

    def test_backbone(self, tester, prepared):
        config, pixel_values, _ = prepared
        tester.create_and_check_backbone(config, pixel_values)

    def test_unip_backbone(self, tmp_path, tester):
        from transformers import AutoBackbone

        config = tester.get_config(out_indices=[1, 3], last_layer_num_attention_heads=4)
        backbone = AutoBackbone.from_config(config).eval()
        assert isinstance(backbone, unip_hf.UnipBackbone)
        assert backbone.out_features == ["stage2", "stage4"] and backbone.channels == [32, 32]
        pixels = tester.pixel_values()
        out = backbone(pixels)
        assert isinstance(out, BackboneOutput) and out.hidden_states is None and out.attentions is None
        for got, expected in zip(out.feature_maps, backbone.forward_intermediates(pixels, [1, 3])):
            torch.testing.assert_close(got, expected)
        everything = backbone(pixels, output_hidden_states=True, output_attentions=True)
        assert len(everything.hidden_states) == 5 and len(everything.attentions) == 4
        as_tuple = backbone(pixels, return_dict=False)
        torch.testing.assert_close(as_tuple[0][1], out.feature_maps[1])
        # a backbone loads the weights of a backbone or segmentation checkpoint
        segmenter = UnipForSemanticSegmentation(config)
        segmenter.save_pretrained(tmp_path)
        # (UnipBackbone.from_pretrained: transformers 5.24's AutoBackbone.from_pretrained asks the Hub about any path
        # before loading, so it fails offline on a local folder)
        loaded = unip_hf.UnipBackbone.from_pretrained(tmp_path, out_indices=[3]).eval()
        assert loaded.out_features == ["stage4"]
        torch.testing.assert_close(loaded(pixels).feature_maps[0],
                                   segmenter.unip.eval().forward_intermediates(pixels, [3])[0])

    def test_upernet_with_unip_backbone(self, tester):
        """transformers' own UperNet builds on a UNIP backbone (through AutoBackbone) and trains."""
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        backbone_config = UnipConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=2, out_indices=[0, 1, 2, 3])
        config = UperNetConfig(backbone_config=backbone_config, hidden_size=16, auxiliary_channels=8, num_labels=3)
        model = UperNetForSemanticSegmentation(config)
        assert isinstance(model.backbone, unip_hf.UnipBackbone)
        pixels = torch.randn(2, 3, 64, 64)
        labels = torch.randint(0, 3, (2, 64, 64))
        out = model(pixels, labels=labels)
        assert out.logits.shape == (2, 3, 64, 64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        out.loss.backward()
        assert model.backbone.encoder.layer[0].attention.qkv.weight.grad.abs().sum() > 0
        optimizer.step()
        assert torch.isfinite(model(pixels, labels=labels).loss)


class TestUnipForSemanticSegmentation(ModelTesterMixin):
    model_class = UnipForSemanticSegmentation
    # patch 8: the pyramid's finest level is 4x the 1/8 map; the probe's logits stay at 1/8
    LOGIT_SIZES = {"ll_fpn": 16, "multilevel_fpn": 16, "linear_probe": 4}

    @pytest.fixture(params=DECODE_HEADS)
    def config_overrides(self, request):
        return {"decode_head": request.param}

    def test_for_semantic_segmentation(self, tester, prepared, config_overrides):
        config, pixel_values, labels = prepared
        logit_size = self.LOGIT_SIZES[config_overrides["decode_head"]]
        tester.create_and_check_for_semantic_segmentation(config, pixel_values, labels, logit_size)

    def test_ll_fpn_uses_only_last_block(self, tester):
        model = UnipForSemanticSegmentation(tester.get_config(decode_head="ll_fpn")).eval()
        pixels = tester.pixel_values()
        base = model(pixels).logits
        # perturbing the final norm (unused by LL-FPN) changes nothing
        with torch.no_grad():
            model.unip.layernorm.weight.mul_(3.0)
        torch.testing.assert_close(model(pixels).logits, base)

    def test_multilevel_fpn_taps_configured_blocks(self, tester):
        model = UnipForSemanticSegmentation(tester.get_config(decode_head="multilevel_fpn", out_indices=[0, 1, 2, 3]))
        assert model._tapped_layers() == [0, 1, 2, 3]

    def test_auxiliary_loss_weight(self, tester):
        config = tester.get_config(decoder_dropout=0.0)
        model = UnipForSemanticSegmentation(config).eval()
        pixels, labels = tester.pixel_values(), tester.labels()
        total = model(pixels, labels=labels).loss
        main = model.compute_loss(model(pixels).logits, labels)
        maps = model.unip.forward_intermediates(pixels, [-1])
        aux = model.compute_loss(model.auxiliary_head(maps[0]), labels)
        torch.testing.assert_close(total, main + 0.4 * aux)
        no_aux = UnipForSemanticSegmentation(tester.get_config(use_auxiliary_head=False))
        assert no_aux.auxiliary_head is None

    def test_ignore_index(self, tester):
        model = UnipForSemanticSegmentation(tester.get_config(use_auxiliary_head=False)).eval()
        pixels, labels = tester.pixel_values(), tester.labels()
        logits = model(pixels).logits
        ignored = labels.clone()
        ignored[:, :16] = 255
        loss = model(pixels, labels=ignored).loss
        up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
        expected = torch.nn.functional.cross_entropy(up[:, :, 16:], labels[:, 16:])
        torch.testing.assert_close(loss, expected)

    def test_linear_probe_freezes_backbone(self, tester):
        """The recipe freezes a probe's backbone (`freeze_probe_backbone`): only the 1x1 head trains, and the backbone
        computes in training mode what it computes in eval mode (no dropout or drop path left in it)."""
        from unip_hf.training.finetuning import freeze_probe_backbone

        model = UnipForSemanticSegmentation(tester.get_config(decode_head="linear_probe", drop_path_rate=0.5,
                                                              hidden_dropout_prob=0.3))
        assert freeze_probe_backbone(model)
        assert not any(p.requires_grad for p in model.unip.parameters())
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == ["decode_head.classifier.weight", "decode_head.classifier.bias"]
        pixels = tester.pixel_values()
        with torch.no_grad():
            evaluated = model.eval().unip(pixels).last_hidden_state
            trained = model.train().unip(pixels).last_hidden_state
        assert torch.equal(trained, evaluated)
        before = {k: v.clone() for k, v in model.unip.state_dict().items()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        model(pixels, labels=tester.labels()).loss.backward()
        optimizer.step()
        for key, value in model.unip.state_dict().items():
            torch.testing.assert_close(value, before[key])
        assert not freeze_probe_backbone(UnipForSemanticSegmentation(tester.get_config()))  # not a probe: untouched

    def test_linear_probe_from_pretrained_is_frozen_by_the_recipe(self, tmp_path, tester):
        """The model no longer overrides `from_pretrained`: a loaded probe is a plain model until the recipe freezes
        it, also when a fine-tuning checkpoint (or a backbone) is re-used for a probe."""
        from unip_hf.training.finetuning import freeze_probe_backbone

        model = UnipForSemanticSegmentation(tester.get_config(decode_head="linear_probe"))
        model.save_pretrained(tmp_path)
        loaded = UnipForSemanticSegmentation.from_pretrained(tmp_path)
        freeze_probe_backbone(loaded)
        trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
        assert trainable == ["decode_head.classifier.weight", "decode_head.classifier.bias"]
        UnipForSemanticSegmentation(tester.get_config()).save_pretrained(tmp_path / "ft")
        probe = UnipForSemanticSegmentation.from_pretrained(tmp_path / "ft", decode_head="linear_probe",
                                                            ignore_mismatched_sizes=True)
        freeze_probe_backbone(probe)
        assert [n for n, p in probe.named_parameters() if p.requires_grad] == trainable

    def test_segmentation_outputs_hidden_states_and_attentions(self, tester):
        model = UnipForSemanticSegmentation(tester.get_config()).eval()
        pixels = tester.pixel_values()
        plain = model(pixels).logits
        out = model(pixels, output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == 5 and len(out.attentions) == 4
        torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=1e-5)
        loss, logits = model(pixels, labels=tester.labels(), return_dict=False)[:2]
        assert loss.ndim == 0 and logits.shape == plain.shape

    def test_uper_heads_match_transformers(self, tester):
        """UnipUperHead / UnipFCNHead are copies of transformers' UperNetHead / UperNetFCNHead (plus mmseg's dropout,
        inactive in eval): with the weights moved over by a key map, the logits are identical."""
        from types import SimpleNamespace

        from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

        config = tester.get_config(decoder_hidden_size=24)
        model = UnipForSemanticSegmentation(config).eval()
        for module in model.modules():  # non-trivial batch-norm statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
        theirs_config = SimpleNamespace(pool_scales=config.pool_scales, hidden_size=24, num_labels=config.num_labels,
                                        auxiliary_in_channels=None, auxiliary_channels=config.auxiliary_channels,
                                        auxiliary_num_convs=1, auxiliary_concat_input=False)
        width = config.hidden_size
        uper, fcn = UperNetHead(theirs_config, [width] * 4).eval(), UperNetFCNHead(theirs_config, [width] * 4).eval()

        def mapped(state):
            out = {}
            for key, value in state.items():
                key = re.sub(r"^psp\.stages\.", "psp_modules.", key)
                key = re.sub(r"^conv\.", "convs.0.", key)
                key = re.sub(r"\.0\.(weight|bias)$", r".conv.\1", key)
                key = re.sub(r"\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".batch_norm.\1",
                             key)
                out[key] = value
            return out

        uper.load_state_dict(mapped(model.decode_head.state_dict()))
        fcn.load_state_dict(mapped(model.auxiliary_head.state_dict()))
        maps = [torch.randn(2, width, size, size) for size in (16, 8, 4, 2)]
        with torch.no_grad():
            assert torch.equal(model.decode_head(maps), uper(maps))
            assert torch.equal(model.auxiliary_head(maps[2]), fcn(maps))

    def test_soft_iou_loss(self, tester):
        from unip_hf.models.losses import soft_iou_loss

        labels = torch.zeros(1, 4, 4, dtype=torch.long)
        labels[0, 1:3, 1:3] = 1
        perfect = torch.where(labels.bool(), 20.0, -20.0).float()
        logits = torch.stack([-perfect, perfect], dim=1)
        assert soft_iou_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
        wrong = torch.stack([perfect, -perfect], dim=1)  # background predicted on the target, target elsewhere
        assert soft_iou_loss(wrong, labels).item() == pytest.approx(1 - 1 / 17, abs=1e-4)  # (0 + 1) / (12 + 4 + 1)
        ignored = labels.clone()
        ignored[0, 0] = 255
        assert torch.isfinite(soft_iou_loss(logits, ignored))
        config = tester.get_config(semantic_loss_type="cross_entropy+soft_iou", use_auxiliary_head=False)
        model = UnipForSemanticSegmentation(config).eval()
        pixels, labels = tester.pixel_values(), tester.labels()
        logits = model(pixels).logits
        up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
        expected = torch.nn.functional.cross_entropy(up, labels) + soft_iou_loss(up, labels)
        torch.testing.assert_close(model(pixels, labels=labels).loss, expected)
        with pytest.raises(ValueError, match="semantic_loss_type"):
            tester.get_config(semantic_loss_type="dice")


# --- Auto classes and remote code ----------------------------------------------------------------------------------


def test_auto_classes_resolve(tmp_path, tester):
    model = UnipForSemanticSegmentation(tester.get_config())
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), UnipConfig)
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(tmp_path), UnipForSemanticSegmentation)
    assert isinstance(AutoModel.from_pretrained(tmp_path), UnipViTModel)
    assert isinstance(AutoModel.from_config(tester.get_config()), UnipViTModel)


def test_checkpoint_carries_remote_code(tmp_path, tester):
    model = UnipForSemanticSegmentation(tester.get_config())
    model.save_pretrained(tmp_path)
    for name in ("configuration_unip.py", "modeling_unip.py"):
        assert (tmp_path / name).is_file()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_unip.UnipViTModel"
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_unip_segmentation.UnipForSemanticSegmentation"
    assert auto_map["AutoConfig"] == "configuration_unip.UnipConfig"
    assert auto_map["AutoBackbone"] == "modeling_unip.UnipBackbone"
    # remote code imports only torch, transformers and its siblings
    for name in ("configuration_unip.py", "modeling_unip.py"):
        imports = re.findall(r"^(?:from|import)\s+([\w.]+)", (tmp_path / name).read_text(), flags=re.M)
        assert {module.split(".")[0] for module in imports} <= {"", "__future__", "json", "os", "shutil",
                                                                           "collections", "dataclasses", "typing",
                                                                           "torch", "transformers"}


HIDDEN_PACKAGE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, json
    class HideUnip(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "unip_hf" or name.startswith("unip_hf."):
                raise ImportError("unip_hf is hidden for this test")
            return None
    sys.meta_path.insert(0, HideUnip())
    try:
        import unip_hf  # noqa: F401
        raise SystemExit("unip_hf should not be importable here")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, AutoModelForSemanticSegmentation
    ckpt = sys.argv[1]
    seg = AutoModelForSemanticSegmentation.from_pretrained(ckpt, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    pixels = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = seg(pixels).logits
    print(json.dumps({
        "seg": type(seg).__name__, "backbone": type(backbone).__name__,
        "module": type(seg).__module__, "heads": backbone.encoder.layer[-1].attention.num_heads,
        "logits_sum": float(logits.double().sum()),
    }))
    """
)


def test_remote_code_loads_without_package(tmp_path, tester):
    model = UnipForSemanticSegmentation(tester.get_config(last_layer_num_attention_heads=4)).eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    pixels = tester.pixel_values()
    torch.save(pixels, tmp_path / "pixels.pt")
    script = tmp_path / "load.py"
    script.write_text(HIDDEN_PACKAGE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(tmp_path / "pixels.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["seg"] == "UnipForSemanticSegmentation" and info["backbone"] == "UnipViTModel"
    assert info["module"].startswith("transformers_modules")
    assert info["heads"] == 4
    with torch.no_grad():
        expected = float(model(pixels).logits.double().sum())
    assert info["logits_sum"] == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_package_exports():
    for name in ("UnipConfig", "UnipViTModel", "UnipForSemanticSegmentation", "UnipBackbone"):
        assert hasattr(unip_hf, name)
