"""`unip export onnx` (UNIP, Zhang et al., ICLR 2025): a tiny UnipForSemanticSegmentation exported with dynamic batch,
height and width (the default) matches PyTorch under onnxruntime at several sizes, and so does a tiny
UnipForSmallTargetSegmentation on real SIRST images of three sizes; `--static` opts out; the command writes the graph
and the preprocessing settings together, only after the check; `--check` draws the overlay and refuses settings of
another class count; the portable adaptive pooling equals PyTorch's; a graph that disagrees with PyTorch is refused
and replaces nothing; unsupported opsets are usage errors; no torchvision notices; the TorchScript fallback; a clear
message when the `[onnx]` extra is missing."""

import builtins
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, data_path
from PIL import Image
from torch import nn

from unip_hf import (
    UnipConfig,
    UnipForSemanticSegmentation,
    UnipForSmallTargetSegmentation,
    UnipImageProcessor,
    UnipSmallTargetConfig,
)
from unip_hf.cli import build_parser, main
from unip_hf.models.modeling_unip_small_target import _rounded_ratio
from unip_hf.deploy.onnx_export import (
    REGISTRY_LOGGER,
    PortableAdaptiveAvgPool2d,
    _NoTorchvisionNotice,
    check_onnx,
    export_onnx,
    load_onnx_settings,
    require_onnx,
    settings_path,
)
from unip_hf.evaluation.model_saving import make_processor

SRC = Path(__file__).resolve().parents[1] / "src"
ID2LABEL = {0: "background", 1: "target"}
#: Real images of three sizes (square, wide, 4:3); the processor maps them to 128x128, 160x104 and 120x160.
REAL_IMAGES = ("sirst/images/Misc_13.png", "sirst/images/Misc_125.png",
               "buffalo-udder/images/val/00532e26-0_img_20230310_174537_503.png")


def needs_onnx():
    try:
        require_onnx(exporter=True)
    except ImportError as err:
        pytest.skip(f"the [onnx] extra is not installed ({err})")


def save_tiny_model(directory, seed=0, position_embedding_type="sincos"):
    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        patch_size=8, image_size=32, num_labels=2, id2label=ID2LABEL,
                        label2id={v: k for k, v in ID2LABEL.items()}, decoder_hidden_size=32, auxiliary_channels=16,
                        position_embedding_type=position_embedding_type)
    torch.manual_seed(seed)
    model = UnipForSemanticSegmentation(config).eval()
    with torch.no_grad():  # batch-norm statistics and a classifier that make the logits depend on the input
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        model.decode_head.classifier.weight.mul_(20.0)
    model.save_pretrained(directory)
    # the evaluation protocol saved by fine-tuning: keep-ratio resize, padding to the patch size
    UnipImageProcessor(img_scale=[160, 128], size_divisor=8).save_pretrained(directory)
    return model


#: Real SIRST images of three sizes and modes (320x240 gray, 249x249 RGB, 273x177 RGB): the small-target model's
#: saved processor keeps their size (padding to the patch size), so the graph meets three input sizes.
SIRST_IMAGES = ("sirst/images/Misc_1.png", "sirst/images/Misc_13.png", "sirst/images/Misc_125.png")


def save_tiny_small_target_model(directory, seed=0):
    config = UnipSmallTargetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   patch_size=8, image_size=32, id2label=ID2LABEL,
                                   label2id={v: k for k, v in ID2LABEL.items()})
    torch.manual_seed(seed)
    model = UnipForSmallTargetSegmentation(config).eval()
    with torch.no_grad():  # batch-norm statistics and a classifier that make the logits depend on the input
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        model.classifier.weight.mul_(300.0)
    model.save_pretrained(directory)
    make_processor(config).save_pretrained(directory)  # what fine-tuning saves: images kept at their size, padded
    return model


def real_images():
    paths = [DATA_DIR / name for name in REAL_IMAGES]
    return [str(path) for path in paths if path.is_file()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    needs_onnx()
    root = tmp_path_factory.mktemp("onnx")
    model = save_tiny_model(root / "model")
    out = root / "export" / "tiny.onnx"
    images = real_images()
    # no --dynamic: dynamic batch, height and width are the default
    argv = ["export", "onnx", str(root / "model"), str(out)] + (["--images", *images] if images else [])
    assert main(argv) == 0
    return model, root / "model", out


@pytest.fixture(scope="module")
def exported_small_target(tmp_path_factory):
    needs_onnx()
    images = [str(data_path(name)) for name in SIRST_IMAGES]
    root = tmp_path_factory.mktemp("onnx_small_target")
    model = save_tiny_small_target_model(root / "model")
    out = root / "export" / "small_target.onnx"
    assert main(["export", "onnx", str(root / "model"), str(out), "--images", *images]) == 0
    return model, root / "model", out, images


def test_export_is_a_cli_command():
    args = build_parser().parse_args(["export", "onnx", "model_dir", "out.onnx", "--dynamic", "--opset", "18"])
    assert (args.command, args.export_command, args.source, args.target, args.dynamic, args.opset, args.check) == (
        "export", "onnx", "model_dir", "out.onnx", True, 18, False)
    args = build_parser().parse_args(["export", "onnx", "--check", "out.onnx", "image.png", "--out", "o.png"])
    assert args.check and (args.source, args.target, args.out) == ("out.onnx", "image.png", "o.png")
    args = build_parser().parse_args(["export", "onnx", "m", "o.onnx"])
    assert args.opset == 20 and not args.static
    assert build_parser().parse_args(["export", "onnx", "m", "o.onnx", "--static"]).static
    assert settings_path("dir/model.onnx").as_posix() == "dir/model.preprocessor.json"


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 48, 40), (1, 3, 64, 88)])
def test_dynamic_graph_matches_pytorch(exported, shape):
    import onnxruntime

    model, _, out = exported
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    got = session.run(None, {"pixel_values": pixels.numpy()})[0]
    assert got.shape == expected.shape == (shape[0], 2, shape[2] // 2, shape[3] // 2)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero outputs


def test_command_writes_graph_and_settings(exported):
    import onnx

    _, model_dir, out = exported
    onnx.checker.check_model(str(out))
    written = settings_path(out)
    assert written.is_file()
    settings = json.loads(written.read_text())
    assert settings["input"] == {"name": "pixel_values", "layout": "NCHW", "dtype": "float32", "channels": 3,
                                 "dynamic": True, "multiple_of": 8, "fixed_size": None}
    assert settings["id2label"] == {"0": "background", "1": "target"}
    assert settings["export"]["exporter"] == "dynamo" and settings["export"]["opset"] == 20
    checks = settings["export"]["checks"]
    assert checks and all(check["max_abs_logit_diff"] < 1e-3 for check in checks)
    if real_images():  # the real images reach the graph at their own (processed) sizes, batch 1 and 2
        assert {tuple(check["input_shape"]) for check in checks} == {
            (1, 3, 128, 128), (2, 3, 128, 128), (1, 3, 104, 160), (2, 3, 104, 160), (1, 3, 120, 160),
            (2, 3, 120, 160)}
    text = " ".join(settings["steps"])
    for fragment in ("0.3801", "0.1871", "min(160 / longer side, 128 / shorter side)", "multiples of 8",
                     "0.299 R + 0.587 G + 0.114 B", "repeating the intensity"):
        assert fragment in text, fragment
    processor, _ = load_onnx_settings(out)
    saved = UnipImageProcessor.from_pretrained(model_dir)
    image = np.random.default_rng(0).integers(0, 65535, (70, 90), dtype=np.uint16)
    np.testing.assert_array_equal(processor(image)["pixel_values"], saved(image)["pixel_values"])


def test_check_writes_overlay(exported, tmp_path, capsys):
    model, model_dir, out = exported
    images = real_images()
    if images:
        image_path = images[1]
    else:
        image_path = str(tmp_path / "scene.png")
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130), dtype=np.uint8)).save(image_path)
    overlay_path = tmp_path / "overlays" / "check.png"
    assert main(["export", "onnx", "--check", str(out), image_path, "--out", str(overlay_path)]) == 0
    assert "pixel shares" in capsys.readouterr().out
    overlay = Image.open(overlay_path)
    width, height = Image.open(image_path).size
    assert overlay.format == "PNG" and overlay.mode == "RGB"
    scale = max(1, 384 // max(width, height))
    assert overlay.size[0] == 2 * (width * scale + 8) + 8 and overlay.size[1] > height * scale  # input | prediction

    result = check_onnx(str(out), image_path, out=str(tmp_path / "again.png"))
    assert result.prediction.shape == (height, width)
    processor = UnipImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        outputs = model(**processor(image_path, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].numpy()
    assert (result.prediction == expected).mean() > 0.999
    assert abs(sum(result.shares.values()) - 1.0) < 1e-9


def test_check_needs_the_settings_file(exported, tmp_path):
    _, _, out = exported
    lonely = tmp_path / "copy.onnx"
    lonely.write_bytes(out.read_bytes())
    with pytest.raises(FileNotFoundError, match="copy.preprocessor.json"):
        check_onnx(str(lonely), "image.png")
    settings_path(lonely).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a settings file of `unip export onnx`"):
        check_onnx(str(lonely), "image.png")


def test_graph_that_disagrees_with_pytorch_is_refused(exported, tmp_path, monkeypatch):
    """A graph whose logits differ from the model's (here: another model's graph) stops the export."""
    import unip_hf.deploy.onnx_export as onnx_export

    _, _, out = exported
    save_tiny_model(tmp_path / "other", seed=1)

    def copy_graph(wrapper, example, output, opset, dynamic):
        output.write_bytes(out.read_bytes())
        return "dynamo"

    monkeypatch.setattr(onnx_export, "_export_graph", copy_graph)
    with pytest.raises(RuntimeError, match="differ from PyTorch's by .* above the tolerance 0.001"):
        export_onnx(str(tmp_path / "other"), str(tmp_path / "bad.onnx"), dynamic=True)
    assert not settings_path(tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnx").exists()
    assert (tmp_path / "bad.refused.onnx").is_file()


def test_refused_graph_replaces_nothing(exported, tmp_path, monkeypatch, capsys):
    """Issue 24 item 4: a graph that fails its check leaves the earlier good graph and its settings as they were
    (the old code wrote the graph first, so the refused one replaced the good one beside the old settings), keeps
    the refused graph under another name and leaves no temporary file; the command says so with status 1."""
    import unip_hf.deploy.onnx_export as onnx_export

    _, model_dir, out = exported
    good, good_settings = tmp_path / "model.onnx", settings_path(tmp_path / "model.onnx")
    good.write_bytes(out.read_bytes())
    good_settings.write_text(settings_path(out).read_text())
    before = (good.read_bytes(), good_settings.read_text())
    save_tiny_model(tmp_path / "other", seed=1)

    def copy_graph(wrapper, example, output, opset, dynamic):  # a graph of another model (seed 0) for seed 1
        output.write_bytes(out.read_bytes())
        return "dynamo"

    monkeypatch.setattr(onnx_export, "_export_graph", copy_graph)
    assert main(["export", "onnx", str(tmp_path / "other"), str(good)]) == 1
    err = capsys.readouterr().err
    assert "above the tolerance" in err and "Traceback" not in err
    assert (good.read_bytes(), good_settings.read_text()) == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_file()) == [
        "model.onnx", "model.preprocessor.json", "model.refused.onnx"]


def test_check_refuses_settings_of_another_class_count(exported, tmp_path, capsys):
    """Issue 24 item 4: `--check` of a 2-class graph with a 3-class settings file is refused, naming both files (the
    old code reported class shares read with the wrong labels, exit status 0)."""
    _, _, out = exported
    graph = tmp_path / "model.onnx"
    graph.write_bytes(out.read_bytes())
    settings = json.loads(settings_path(out).read_text())
    settings["id2label"] = {"0": "background", "1": "target", "2": "other"}
    settings["output"].pop("classes", None)  # as an older settings file: the count comes from id2label
    settings_path(graph).write_text(json.dumps(settings))
    image = str(tmp_path / "scene.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56), dtype=np.uint8)).save(image)
    with pytest.raises(ValueError, match=r"gives 2 classes but its settings .*model.preprocessor.json describe 3"):
        check_onnx(str(graph), image, out=str(tmp_path / "o.png"))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--check", str(graph), image, "--out", str(tmp_path / "o.png")])
    assert exit_info.value.code == 2
    assert "belongs to another export" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_small_target_model_exports_and_matches_pytorch_on_sirst(exported_small_target):
    """Issue 20 item 4: UnipForSmallTargetSegmentation exports (the old code refused it) with dynamic batch, height
    and width, checked against PyTorch on three real SIRST images at their own three sizes, batch 1 and 2."""
    import onnxruntime

    model, _, out, images = exported_small_target
    settings = json.loads(settings_path(out).read_text())
    assert settings["model_class"] == "UnipForSmallTargetSegmentation"
    assert settings["input"]["dynamic"] and settings["input"]["multiple_of"] == 1
    assert settings["output"]["classes"] == 2
    checks = settings["export"]["checks"]
    assert [check["image"] for check in checks] == [image for image in images for _ in (1, 2)]
    assert {tuple(check["input_shape"]) for check in checks} == {
        (1, 3, 240, 320), (2, 3, 240, 320), (1, 3, 256, 256), (2, 3, 256, 256), (1, 3, 184, 280), (2, 3, 184, 280)}
    assert all(check["logits_shape"] == check["input_shape"][:1] + [2] + check["input_shape"][2:] for check in checks)
    assert all(check["max_abs_logit_diff"] < 1e-3 for check in checks)
    assert "at the size fed to the graph" in " ".join(settings["steps"])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for shape in ((1, 3, 37, 53), (2, 3, 17, 90)):  # sizes off the patch grid: the graph pads inside, as the model
        pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits.numpy()
        got = session.run(None, {"pixel_values": pixels.numpy()})[0]
        assert got.shape == expected.shape == (shape[0], 2, *shape[2:])
        assert np.abs(got - expected).max() < 1e-3 and np.abs(expected).max() > 0.1


def test_check_runs_the_small_target_graph(exported_small_target, tmp_path, capsys):
    """Issue 20 item 4: `--check` runs a small-target graph on a SIRST image; its prediction is PyTorch's."""
    model, model_dir, out, images = exported_small_target
    assert main(["export", "onnx", "--check", str(out), images[2], "--out", str(tmp_path / "o.png")]) == 0
    assert "pixel shares: background" in capsys.readouterr().out
    result = check_onnx(str(out), images[2], out=str(tmp_path / "again.png"))
    width, height = Image.open(images[2]).size
    processor = UnipImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        outputs = model(**processor(images[2], return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].numpy()
    assert result.prediction.shape == (height, width)
    assert (result.prediction == expected).mean() > 0.999
    assert 0 < result.shares["target"] < 1  # the comparison is not between two constant maps


def test_static_export_is_the_opt_out_and_logs_no_torchvision_notice(tmp_path):
    """Issue 20 item 4: `--static` gives the old fixed 1x3xHxW graph (and settings that resize to it). Issue 22 item 6:
    the export logs none of torch's four "torchvision is not installed" warnings (the old code did, every export)."""
    needs_onnx()
    import onnxruntime

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    registry_logger = logging.getLogger(REGISTRY_LOGGER)
    registry_logger.addHandler(handler)
    try:
        save_tiny_model(tmp_path / "model")
        assert main(["export", "onnx", str(tmp_path / "model"), str(tmp_path / "static.onnx"), "--static"]) == 0
    finally:
        registry_logger.removeHandler(handler)
    assert not [record for record in records if "torchvision" in record.getMessage()]
    session = onnxruntime.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    settings = json.loads(settings_path(tmp_path / "static.onnx").read_text())
    assert settings["input"]["dynamic"] is False and settings["input"]["fixed_size"] == [32, 32]


def test_torchvision_filter_drops_only_that_notice():
    """Issue 22 item 6: the filter is precise: other records of torch's ONNX registry still pass."""
    def record(message, name=REGISTRY_LOGGER):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, ("torchvision::nms",), None)

    notice = _NoTorchvisionNotice()
    assert not notice.filter(record("torchvision is not installed. Skipping %s"))
    assert notice.filter(record("Failed to register %s"))
    assert notice.filter(record("torchvision is not installed. Skipping %s", name="somebody.else"))


@pytest.mark.parametrize("opset", ["3", "17", "24", "x"])
def test_unsupported_opset_is_a_usage_error(opset, capsys):
    """Issue 24 item 17: `--opset 3` (and any opset torch's exporter does not write as asked) is an argument error
    at start naming --opset, exit status 2, no traceback (the old code accepted it and failed with a traceback; an
    opset from 7 to 17 silently became an opset-18 graph)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "no-such-model", "out.onnx", "--opset", opset])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --opset" in err and "18 to 23" in err and "Traceback" not in err
    for accepted in ("18", "23"):
        assert build_parser().parse_args(["export", "onnx", "m", "o.onnx", "--opset", accepted]).opset == int(accepted)
    with pytest.raises(ValueError, match="opset must be 18 to 23"):
        export_onnx("no-such-model", "out.onnx", opset=7)


def test_rounded_ratio_is_python_round():
    """The integer rounding that lets the small-target model export with symbolic sizes equals `round(a / b)`,
    ties to even included."""
    assert [_rounded_ratio(a, 2) for a in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert all(_rounded_ratio(a, b) == round(a / b) for a in range(0, 400) for b in range(1, 60))


def test_torchscript_fallback_when_dynamo_fails(tmp_path, monkeypatch):
    needs_onnx()
    save_tiny_model(tmp_path / "model", position_embedding_type="learned")
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated failure of the dynamo exporter")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    result = export_onnx(str(tmp_path / "model"), str(tmp_path / "ts.onnx"), opset=18, dynamic=True)
    assert result.exporter == "torchscript" and result.max_abs_diff < 1e-3
    assert len(result.checks) == 4  # two synthetic scenes of different sizes, batch 1 and 2


@pytest.mark.parametrize("in_size", [(1, 1), (2, 3), (5, 7), (6, 6), (13, 10), (32, 20)])
@pytest.mark.parametrize("out_size", [1, 2, 3, 6])
def test_portable_pooling_equals_adaptive_pooling(in_size, out_size):
    x = torch.randn(2, 4, *in_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(PortableAdaptiveAvgPool2d(out_size)(x), nn.AdaptiveAvgPool2d(out_size)(x),
                               atol=1e-6, rtol=1e-5)


def test_backbone_checkpoint_is_refused(tmp_path):
    needs_onnx()
    from unip_hf import UnipViTModel

    UnipViTModel(UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            patch_size=8, image_size=32)).save_pretrained(tmp_path / "backbone")
    with pytest.raises(ValueError, match="holds a UnipViTModel, not a UnipForSemanticSegmentation or "
                                         "UnipForSmallTargetSegmentation"):
        export_onnx(str(tmp_path / "backbone"), str(tmp_path / "x.onnx"))
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        export_onnx(str(tmp_path / "file.bin"), str(tmp_path / "x.onnx"))


def test_unip_command_does_not_import_the_onnx_extra():
    code = ("import sys; from unip_hf.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH")] if p)}
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert printed.strip() == "[]"


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r'onnxruntime.*pip install -e "\.\[onnx\]"'):
        export_onnx(str(tmp_path), str(tmp_path / "x.onnx"))
    with pytest.raises(SystemExit) as exit_info:  # from the command: one error line, exit status 2
        main(["export", "onnx", "--check", str(tmp_path / "x.onnx"), "image.png"])
    assert exit_info.value.code == 2
