"""`unip export onnx`: a UNIP segmentation model (Zhang et al., "UNIP", ICLR 2025; `UnipForSemanticSegmentation`,
LL-FPN / multi-level FPN + UPerNet, or the linear probe; `UnipForSmallTargetSegmentation`, the full-resolution
small-target model) as an ONNX graph for onnxruntime and edge runtimes.

The export goes through `torch.onnx.export(..., dynamo=True)` (the TorchScript exporter only when that fails), with
the adaptive average pooling of UPerNet's pyramid pooling written as two averaging matrices built from the input size,
so that one graph serves every input size (torch's own decomposition of that pooling bakes the kernel layout of the
example size into the graph, which silently gives wrong numbers at other sizes). The graph is checked against PyTorch
with onnxruntime on images preprocessed by the model's saved `UnipImageProcessor`, and the processor settings are
written next to it (`OUT.preprocessor.json`, with the steps in plain words) so that the graph can be fed without
Python. Both files are written under temporary names and moved into place together only once the check passes.
Batch, height and width are dynamic by default: the saved processor keeps each image's aspect ratio. `unip export onnx
--check OUT.onnx IMAGE` runs one image through onnxruntime and draws the overlay.

onnx, onnxruntime and onnxscript are the optional extra `pip install 'unip-hf[onnx]'`; they are imported only here,
when a command needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig

from unip_hf import register_auto_classes
from unip_hf.choices import DEFAULT_OPSET, DEFAULT_TOLERANCE, INSTALL_HINT, MAX_OPSET, MIN_OPSET
from unip_hf.data.synthetic import make_thermal_scene
from unip_hf.studies.demo import overlay_panels
from unip_hf.models.image_processing_unip import UnipImageProcessor
from unip_hf.models.infrared_decoding import LUMA_WEIGHTS, load_infrared_image
from unip_hf.models.modeling_unip_small_target import UnipForSmallTargetSegmentation
from unip_hf.models.modeling_unip_segmentation import UnipForSemanticSegmentation
from unip_hf.evaluation.model_saving import make_processor

__all__ = ["check_onnx", "export_onnx"]  # the README documents these; the rest stays importable

SETTINGS_FORMAT = "unip-onnx-preprocessor"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
#: The model classes `export_onnx` exports, by the name `config.architectures` gives them.
EXPORTABLE_MODELS = {cls.__name__: cls for cls in (UnipForSemanticSegmentation, UnipForSmallTargetSegmentation)}
#: `config.model_type` -> class, for a config saved without `architectures`.
_MODEL_TYPES = {"unip": UnipForSemanticSegmentation, "unip_small_target": UnipForSmallTargetSegmentation}


def require_onnx(exporter: bool = False) -> dict[str, Any]:
    """Import onnx and onnxruntime (and onnxscript, which torch's dynamo exporter needs, when `exporter`).

    Returns:
        `dict[str, module]`: the imported modules by name.

    Raises:
        ImportError: one of them is missing, naming it and the extra to install.
    """
    names = ("onnx", "onnxruntime") + (("onnxscript",) if exporter else ())
    modules, missing = {}, []
    for name in names:
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed; install the extra: "
                          f"{INSTALL_HINT}")
    return modules


def settings_path(onnx_path: str | os.PathLike) -> Path:
    """Where the preprocessing settings of `onnx_path` live: `model.onnx` -> `model.preprocessor.json`."""
    path = Path(onnx_path)
    stem = path.name[: -len(".onnx")] if path.name.lower().endswith(".onnx") else path.name
    return path.with_name(stem + ".preprocessor.json")


# ----------------------------------------------------------------------------------------------------- export graph
class PortableAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d` written as `P_h @ x @ P_w^T`, with the averaging matrices built from the input size at
    run time: the same numbers as PyTorch's adaptive pooling (window `[floor(i*n/o), ceil((i+1)*n/o))`), in a form
    that ONNX exporters trace without fixing the input size.

    Args:
        output_size (`int` or `tuple[int, int]`): as for `nn.AdaptiveAvgPool2d` (no `None` entries).
    """

    def __init__(self, output_size: int | tuple[int, int]):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or any(not isinstance(side, int) or side < 1 for side in size):
            raise ValueError(f"output_size must be a positive int or two positive ints, got {output_size!r}")
        self.output_size = size

    @staticmethod
    def averaging_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
        """`(out_size, in_size)` matrix whose row `i` averages the adaptive pooling window `i`."""
        rows = torch.arange(out_size, device=like.device)
        start = torch.div(rows * in_size, out_size, rounding_mode="floor")
        end = torch.div((rows + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
        columns = torch.arange(in_size, device=like.device)
        inside = ((columns[None] >= start[:, None]) & (columns[None] < end[:, None])).to(like.dtype)
        return inside / inside.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.averaging_matrix(x.shape[-2], self.output_size[0], x)
        columns = self.averaging_matrix(x.shape[-1], self.output_size[1], x)
        return rows @ x @ columns.transpose(0, 1)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class _LogitsOnly(nn.Module):
    """`pixel_values -> logits` of a segmentation model (the one input and output of the exported graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def exportable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` returning only the logits, with every `nn.AdaptiveAvgPool2d` replaced by
    [`PortableAdaptiveAvgPool2d`] (the model itself is left untouched)."""
    clone = copy.deepcopy(model).eval()
    for module in list(clone.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                size = child.output_size
                if isinstance(size, (tuple, list)) and any(side is None for side in size):
                    raise ValueError(f"cannot export adaptive pooling with output_size={size} (None entries)")
                setattr(module, name, PortableAdaptiveAvgPool2d(size))
    return _LogitsOnly(clone).eval()


#: The logger of torch's ONNX operator registry, which warns "torchvision is not installed. Skipping torchvision::nms"
#: (and roi_align, roi_pool, deform_conv2d) on every export: UNIP models use no torchvision operator.
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


class _NoTorchvisionNotice(logging.Filter):
    """Drops exactly the registry's "torchvision is not installed. Skipping torchvision::..." records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == REGISTRY_LOGGER and isinstance(record.msg, str)
                    and record.msg.startswith("torchvision is not installed"))


@contextlib.contextmanager
def _quiet_torchvision_notice():
    """Silence the registry's four "torchvision is not installed" warnings for the duration (other records pass)."""
    logger, notice = logging.getLogger(REGISTRY_LOGGER), _NoTorchvisionNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def graph_opset(path: str | os.PathLike) -> int | None:
    """The default-domain opset a saved ONNX graph imports (`None` when it names none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _export_graph(wrapper: nn.Module, example: torch.Tensor, output: Path, opset: int, dynamic: bool) -> str:
    """Write the ONNX graph; returns the exporter used (`"dynamo"`, or `"torchscript"` when dynamo failed)."""
    with _quiet_torchvision_notice():
        return _export_graph_quietly(wrapper, example, output, opset, dynamic)


def _export_graph_quietly(wrapper: nn.Module, example: torch.Tensor, output: Path, opset: int, dynamic: bool) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], verbose=False,
                dynamic_shapes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if dynamic else None,
            )
        program.save(str(output), external_data=False)
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - any failure of the new exporter falls back to the old one
        if opset > 20:
            raise RuntimeError(f"torch.onnx.export(dynamo=True) failed ({type(err).__name__}: {err}); the TorchScript "
                               f"exporter supports opsets up to 20, not --opset {opset}") from err
        print(f"torch.onnx.export(dynamo=True) failed ({type(err).__name__}: {err}); trying the TorchScript exporter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(output), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height",
                                                                                         3: "width"}}
            if dynamic else None,
        )
    return "torchscript"


# ----------------------------------------------------------------------------------------------------- settings
def describe_preprocessing(processor: Any, dynamic: bool, patch_size: int, logits_stride: float) -> list[str]:
    """The processor's steps in plain words, with its numbers, for users who preprocess without Python."""
    r, g, b = LUMA_WEIGHTS
    steps = [
        "Decode the image to one intensity channel in [0, 1]: 8-bit gray as value / 255 (rescale_factor "
        f"{processor.rescale_factor:.6g}); colour (RGB, RGBA, palette) first to luma {r} R + {g} G + {b} B, alpha "
        "dropped; a colour image whose three channels are equal is taken as gray.",
    ]
    if processor.bit_depth_scaling == "percentile":
        low, high = processor.percentiles
        steps.append(f"16-bit images: per image, (x - p{low:g}) / (p{high:g} - p{low:g}) clipped to [0, 1], where p{low:g}"
                     f" and p{high:g} are that image's percentiles {low:g} and {high:g} (linear interpolation); a "
                     "constant image uses the fixed range 0..65535 instead.")
    else:
        low, high = processor.intensity_range or (0.0, 65535.0)
        steps.append(f"16-bit images: (x - {low:g}) / ({high:g} - {low:g}) clipped to [0, 1].")
    if processor.intensity_range is not None:
        low, high = processor.intensity_range
        steps.append(f"Float images: (x - {low:g}) / ({high:g} - {low:g}) clipped to [0, 1].")
    else:
        steps.append("Float images: taken as already in [0, 1], clipped to it.")
    if not processor.do_resize:
        steps.append("No resizing.")
    elif processor.img_scale is not None:
        long_side, short_side = max(processor.img_scale), min(processor.img_scale)
        steps.append(f"Resize keeping the aspect ratio: scale = min({long_side} / longer side, {short_side} / shorter "
                     "side) (small images are enlarged too), new side = floor(side * scale + 0.5); bilinear, "
                     "anti-aliased when shrinking (PIL's resize of a float32 image), on the [0, 1] intensity.")
    else:
        size = processor.size
        height, width = (size["height"], size["width"]) if "height" in size else (None, None)
        rule = f"to {height} x {width} (height x width)" if height else f"by the rule {dict(size)}"
        steps.append(f"Resize {rule}; bilinear, anti-aliased when shrinking (PIL's resize of a float32 image), on the "
                     "[0, 1] intensity.")
    if processor.do_normalize:
        mean = [float(v) for v in np.atleast_1d(processor.image_mean)]
        std = [float(v) for v in np.atleast_1d(processor.image_std)]
        steps.append(f"Normalise: (x - mean) / std with mean {mean} and std {std} (one value per output channel).")
    channels = processor.num_channels
    steps.append(f"Make {channels} channel(s)" + (" by repeating the intensity" if channels > 1 else "") + ".")
    if processor.size_divisor:
        steps.append(f"Pad at the bottom and right with 0 (after normalisation) to multiples of "
                     f"{processor.size_divisor} pixels in height and width.")
    if not dynamic:
        sizes = "; the fixed size above, batch 1"
    elif patch_size > 1:
        sizes = f"; any batch and any height and width that are multiples of {patch_size}"
    else:
        sizes = "; any batch, height and width"
    steps.append(f"Feed float32 NCHW as '{INPUT_NAME}' (batch, {channels}, height, width){sizes}.")
    if logits_stride == 1:
        steps.append(f"Output '{OUTPUT_NAME}' (batch, classes, height, width), at the size fed to the graph: crop any "
                     "padding, resize bilinearly (half-pixel centres, no corner alignment) to the original image size, "
                     "and take the argmax over classes (names in 'id2label').")
    else:
        steps.append(f"Output '{OUTPUT_NAME}' (batch, classes, height / {logits_stride:g}, width / {logits_stride:g}): "
                     "resize it bilinearly (half-pixel centres, no corner alignment) to the input size fed to the "
                     "graph, crop any padding, resize bilinearly to the original image size, and take the argmax over "
                     "classes (names in 'id2label').")
    return steps


def load_onnx_settings(onnx_path: str | os.PathLike, settings: str | os.PathLike | None = None):
    """Read the settings file of an exported graph.

    Returns:
        `(UnipImageProcessor, dict)`: the processor rebuilt from the settings, and the whole settings dict.

    Raises:
        FileNotFoundError / ValueError: the file is missing or is not a settings file of `unip export onnx`.
    """

    path = Path(settings) if settings is not None else settings_path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preprocessing settings of {onnx_path} not found; `unip export onnx` writes "
                                "them next to the .onnx file (or pass --settings)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON settings file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT or not isinstance(data.get("processor"), dict):
        raise ValueError(f"{path}: not a settings file of `unip export onnx` (expected 'format': {SETTINGS_FORMAT!r} "
                         "and a 'processor' entry)")
    return UnipImageProcessor.from_dict(data["processor"]), data


# ----------------------------------------------------------------------------------------------------- export
@dataclass
class OnnxExportResult:
    """What `export_onnx` returns."""

    path: str
    settings_path: str
    exporter: str
    opset: int
    dynamic: bool
    max_abs_diff: float
    checks: list[dict[str, Any]] = field(default_factory=list)


def _validation_images(images: list[str] | None) -> list[tuple[str, Any]]:
    if images:
        return [(str(path), str(path)) for path in images]
    print("no --images given: validating on two synthetic thermal scenes (pass real images with --images)")
    return [(f"synthetic scene {seed} ({height}x{width})", make_thermal_scene(height, width, seed=seed)[0])
            for seed, (height, width) in enumerate(((200, 264), (150, 120)))]


def _static_size(processor: Any, config: Any) -> tuple[int, int]:
    """Input size of a static export: the processor's fixed size when it has one and it fits the patch grid, else the
    config's `image_size`."""
    size = processor.size or {}
    patch = config.patch_size
    if processor.img_scale is None and processor.do_resize and "height" in size and "width" in size:
        height, width = int(size["height"]), int(size["width"])
        if height % patch == 0 and width % patch == 0:
            return height, width
    side = config.image_size
    return (side, side) if isinstance(side, int) else tuple(side)


def load_exportable(model_dir: str) -> tuple[nn.Module, Any]:
    """The segmentation model saved in `model_dir` (eval mode) and its processor (the saved one, else the protocol of
    its config).

    Raises:
        ValueError: `model_dir` is a file, or holds another kind of model (a backbone, ...): the message names the
            kinds that export.
    """
    if os.path.isfile(model_dir):
        raise ValueError(f"MODEL_DIR {model_dir} is a file; give the folder of a saved segmentation model")
    register_auto_classes()
    config = AutoConfig.from_pretrained(model_dir)
    architectures = list(getattr(config, "architectures", None) or [])
    found = [EXPORTABLE_MODELS[name] for name in architectures if name in EXPORTABLE_MODELS]
    model_class = found[0] if found else (None if architectures else _MODEL_TYPES.get(config.model_type))
    if model_class is None:
        held = ", ".join(architectures) or f"model of type {config.model_type!r}"
        raise ValueError(f"MODEL_DIR {model_dir} holds a {held}, not a {' or '.join(EXPORTABLE_MODELS)}; export a "
                         "fine-tuned segmentation model (recipes/finetune.py or `unip demo` write one)")
    model = model_class.from_pretrained(model_dir).eval()
    try:
        processor = UnipImageProcessor.from_pretrained(model_dir)
    except OSError:
        print(f"{model_dir} has no preprocessor_config.json: using the evaluation protocol of its config")
        processor = make_processor(model.config)
    return model, processor


def _refused_path(output: Path) -> Path:
    """Where a graph that failed its check is kept for inspection: `model.onnx` -> `model.refused.onnx`."""
    stem = output.name[: -len(".onnx")] if output.name.lower().endswith(".onnx") else output.name
    return output.with_name(stem + ".refused.onnx")


def export_onnx(model_dir: str, output: str, opset: int = DEFAULT_OPSET, dynamic: bool = True,
                images: list[str] | None = None, tolerance: float = DEFAULT_TOLERANCE) -> OnnxExportResult:
    """Export the segmentation model in `model_dir` (`UnipForSemanticSegmentation` or
    `UnipForSmallTargetSegmentation`) to `output`, check it with onnxruntime and write the preprocessing settings
    next to it.

    The graph and the settings are written under temporary names in the output folder and moved to `output` and
    `output`'s `.preprocessor.json` only once every check passed: a graph that fails replaces nothing (it is kept as
    `<name>.refused.onnx` for inspection) and never pairs with another export's settings.

    Args:
        model_dir (`str`): a saved segmentation model (local folder or Hub id), with its processor.
        output (`str`): the `.onnx` file to write (weights inside the file).
        opset (`int`, *optional*, defaults to `DEFAULT_OPSET`): ONNX opset, `MIN_OPSET` to `MAX_OPSET`.
        dynamic (`bool`, *optional*, defaults to `True`): dynamic batch, height and width (multiples of the patch
            size for `UnipForSemanticSegmentation`, any for the small-target model), as the saved processor, which
            keeps each image's aspect ratio, needs. `False`: batch 1 at one fixed size (the processor's fixed size,
            else the config's `image_size`), and the settings file resizes every image to it.
        images (`list[str]`, *optional*): image files to check the graph on (two synthetic scenes when absent).
        tolerance (`float`, *optional*, defaults to 1e-3): largest accepted max-abs logit difference.

    Raises:
        ImportError: the `[onnx]` extra is missing.
        ValueError: an opset outside `MIN_OPSET`..`MAX_OPSET`, or `model_dir` is no exportable model.
        RuntimeError: onnxruntime's logits differ from PyTorch's by more than `tolerance` on some image, or the
            graph does not carry the opset asked for (nothing is replaced; see above).
    """
    modules = require_onnx(exporter=True)
    ort = modules["onnxruntime"]

    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be {MIN_OPSET} to {MAX_OPSET} (the opsets torch's exporter writes as asked), "
                         f"got {opset!r}")
    model, processor = load_exportable(model_dir)
    config = model.config
    small_target = isinstance(model, UnipForSmallTargetSegmentation)
    patch = config.patch_size
    multiple_of = 1 if small_target else patch  # the small-target model pads to the patch size inside the graph
    if dynamic:
        # example size off the configured grid (so no branch of the position embeddings is taken for it) and batch 2
        grid = config.image_size // patch if isinstance(config.image_size, int) else config.image_size[0] // patch
        example = torch.randn(2, config.num_channels, (grid + 1) * patch, (grid + 2) * patch)
        if (multiple_of > 1 and processor.size_divisor is None
                and (processor.img_scale is not None or not processor.do_resize)):
            # sizes that vary per image must reach the graph as multiples of the patch size
            processor.size_divisor = patch
            print(f"the processor does not pad: the settings pad to multiples of the patch size {patch}")
    else:
        height, width = _static_size(processor, config)
        processor = UnipImageProcessor.from_dict({**processor.to_dict(), "img_scale": None, "size_divisor": None,
                                                  "do_resize": True, "size": {"height": height, "width": width}})
        example = torch.randn(1, config.num_channels, height, width)

    output_path = Path(output)
    written = settings_path(output_path)
    if output_path.is_dir() or written.is_dir():
        folder = output_path if output_path.is_dir() else written
        raise ValueError(f"{folder} is a folder; give the .onnx file to write")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # temporary names in the output folder (the final moves stay on one file system), unique to this process
    partial = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")
    partial_settings = written.with_name(f".{written.name}.{os.getpid()}.partial")
    try:
        exporter = _export_graph(exportable(model), example, partial, opset, dynamic)
        shape = "dynamic batch, height and width" if dynamic else "static shape " + "x".join(map(str, example.shape))
        print(f"exported {model.__class__.__name__} ({partial.stat().st_size / 2**20:.1f} MiB, {exporter} exporter, "
              f"opset {opset}, {shape}); checking it against PyTorch before writing {output_path}")
        written_opset = graph_opset(partial)
        if written_opset != opset:
            raise RuntimeError(f"the exporter wrote opset {written_opset}, not the --opset {opset} asked for; export "
                               f"with --opset {written_opset} or another opset from {MIN_OPSET} to {MAX_OPSET}")
        checks = _check_against_pytorch(ort, model, processor, partial, output_path, images, dynamic, tolerance)
        worst = max(check["max_abs_logit_diff"] for check in checks)
        stride = checks[0]["input_shape"][-1] / checks[0]["logits_shape"][-1]  # input pixels per logit
        settings = {
            "format": SETTINGS_FORMAT,
            "version": 1,
            "model": str(model_dir),
            "model_class": model.__class__.__name__,
            "onnx_file": output_path.name,
            "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": config.num_channels,
                      "dynamic": dynamic, "multiple_of": multiple_of,
                      "fixed_size": None if dynamic else [int(example.shape[-2]), int(example.shape[-1])]},
            "output": {"name": OUTPUT_NAME, "layout": "NCHW", "meaning": "class scores before softmax",
                       "classes": int(config.num_labels)},
            "id2label": {str(k): v for k, v in config.id2label.items()},
            "steps": describe_preprocessing(processor, dynamic, multiple_of, stride),
            "processor": processor.to_dict(),
            "export": {"exporter": exporter, "opset": opset, "torch": torch.__version__,
                       "onnxruntime": ort.__version__, "max_abs_logit_diff": worst, "checks": checks},
        }
        partial_settings.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    except RuntimeError:
        if partial.is_file():
            os.replace(partial, _refused_path(output_path))
            print(f"the refused graph is kept for inspection as {_refused_path(output_path)}; {output_path} and "
                  f"{written} are unchanged")
        partial_settings.unlink(missing_ok=True)
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        partial_settings.unlink(missing_ok=True)
        raise
    os.replace(partial, output_path)
    os.replace(partial_settings, written)
    print(f"max |logit difference| over {len(checks)} check(s): {worst:.2e} (tolerance {tolerance:g}); wrote "
          f"{output_path} ({output_path.stat().st_size / 2**20:.1f} MiB) and its preprocessing settings {written}")
    return OnnxExportResult(str(output_path), str(written), exporter, opset, dynamic, worst, checks)


def _check_against_pytorch(ort: Any, model: nn.Module, processor: Any, graph: Path, output_path: Path,
                           images: list[str] | None, dynamic: bool, tolerance: float) -> list[dict[str, Any]]:
    """Logits of the graph at `graph` (onnxruntime) against the model's (PyTorch) on each validation image, batch 1
    (and 2 when `dynamic`); raises `RuntimeError` above `tolerance` or on a shape mismatch."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    checks = []
    for name, image in _validation_images(images):
        pixels = processor(image, return_tensors="pt")["pixel_values"]
        batches = [pixels]
        if dynamic:
            batches.append(torch.cat([pixels, pixels.flip(-1)]))  # batch 2
        for batch in batches:
            with torch.no_grad():
                expected = model(pixel_values=batch).logits.numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
            if got.shape != expected.shape:
                raise RuntimeError(f"{output_path}: onnxruntime gives logits of shape {got.shape} on {name}, PyTorch "
                                   f"{expected.shape}; the graph is not trustworthy (nothing written)")
            diff = float(np.abs(got - expected).max())
            checks.append({"image": name, "input_shape": list(batch.shape), "logits_shape": list(got.shape),
                           "max_abs_logit_diff": diff})
            print(f"  {name}: input {tuple(batch.shape)}, max |logit difference| onnxruntime vs PyTorch = {diff:.2e}")
            if not diff < tolerance:
                raise RuntimeError(f"{output_path}: onnxruntime's logits differ from PyTorch's by {diff:.3g} (max abs) "
                                   f"on {name} at input {tuple(batch.shape)}, above the tolerance {tolerance:g}; the "
                                   "graph is not trustworthy (nothing written)")
    return checks


# ----------------------------------------------------------------------------------------------------- check
@dataclass
class OnnxCheckResult:
    """What `check_onnx` returns: the class-id map at the image size, the overlay's path, class pixel shares."""

    prediction: np.ndarray
    overlay_path: str
    shares: dict[str, float]


def _settings_classes(data: dict[str, Any]) -> int | None:
    """The class count a settings file describes (`output.classes`, else the size of `id2label`; `None`: neither)."""
    classes = (data.get("output") or {}).get("classes") if isinstance(data.get("output"), dict) else None
    if isinstance(classes, int):
        return classes
    return len(data["id2label"]) if isinstance(data.get("id2label"), dict) and data["id2label"] else None


def _class_mismatch(onnx_path: str | os.PathLike, graph_classes: int, settings: str | os.PathLike, classes: int) -> str:
    return (f"{onnx_path} gives {graph_classes} classes but its settings {settings} describe {classes}; the settings "
            "file belongs to another export: export the model again (it writes both files) or pass the matching "
            "--settings")


def check_onnx(onnx_path: str, image: str, out: str | None = None, settings: str | None = None) -> OnnxCheckResult:
    """Run one image through the exported graph with onnxruntime (preprocessed with the settings file through
    `UnipImageProcessor`) and write the prediction overlay (`unip_hf.studies.demo.overlay_panels`).

    Args:
        onnx_path (`str`): the exported graph.
        image (`str`): an image file of any kind the processor accepts (8/16-bit, colour, palette).
        out (`str`, *optional*): the overlay PNG (default: `<image name>.onnx_overlay.png` in the current folder).
        settings (`str`, *optional*): the settings file (default: the one next to `onnx_path`).
    """
    ort = require_onnx()["onnxruntime"]

    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"{onnx_path}: ONNX file not found")
    processor, data = load_onnx_settings(onnx_path, settings)
    picture = load_infrared_image(image)
    width, height = picture.size
    pixels = processor(picture, return_tensors="np")["pixel_values"].astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.get_inputs()[0].shape
    if isinstance(expected[1], int) and expected[1] != pixels.shape[1]:
        raise ValueError(f"{onnx_path} expects {expected[1]} channel(s) but its settings give {pixels.shape[1]}; the "
                         "settings file belongs to another export")
    classes = _settings_classes(data)
    graph_classes = session.get_outputs()[0].shape[1] if len(session.get_outputs()[0].shape) == 4 else None
    if isinstance(graph_classes, int) and classes is not None and graph_classes != classes:
        raise ValueError(_class_mismatch(onnx_path, graph_classes, settings or settings_path(onnx_path), classes))
    logits = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    if classes is not None and logits.shape[1] != classes:
        raise ValueError(_class_mismatch(onnx_path, logits.shape[1], settings or settings_path(onnx_path), classes))
    prediction = processor.post_process_semantic_segmentation({"logits": torch.from_numpy(logits)},
                                                               target_sizes=[(height, width)])[0].numpy()
    id2label = {int(k): v for k, v in data.get("id2label", {}).items()} or {
        index: f"class {index}" for index in range(logits.shape[1])}
    out_path = Path(out) if out else Path(Path(image).name + ".onnx_overlay.png")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_panels(picture, prediction, id2label, None, scale=max(1, 384 // max(picture.size))).save(out_path)
    counts = np.bincount(prediction.ravel(), minlength=len(id2label))
    shares = {id2label.get(index, f"class {index}"): float(count) / prediction.size for index, count in enumerate(counts)}
    print(f"{image}: {width}x{height}, logits {tuple(logits.shape)}; pixel shares: "
          + ", ".join(f"{name} {share * 100:.1f}%" for name, share in shares.items()))
    print(f"overlay written to {out_path}")
    return OnnxCheckResult(prediction, str(out_path), shares)


# ----------------------------------------------------------------------------------------------------- command
def command_export_onnx(args: argparse.Namespace) -> int:
    """`unip export onnx`: user errors (missing files, wrong model kind, mismatched settings, missing extra) end the
    command with one "error:" line and exit status 2; a graph that fails its check, with the reason and status 1."""
    parser = getattr(args, "command_parser", None)

    def fail(message: str, status: int) -> int:
        if parser is not None and status == 2:
            parser.error(message)  # usage and "error: ...", exit 2
        print(f"unip export onnx: error: {message}", file=sys.stderr)
        return status

    try:
        if args.check:
            check_onnx(args.source, args.target, out=args.out, settings=args.settings)
            return 0
        if args.out or args.settings:
            return fail("--out and --settings go with --check", 2)
        export_onnx(args.source, args.target, opset=args.opset, dynamic=not args.static, images=args.images,
                    tolerance=args.tolerance)
    except (ImportError, FileNotFoundError, ValueError) as err:
        return fail(str(err), 2)
    except RuntimeError as err:  # the graph failed its check: nothing was replaced
        return fail(str(err), 1)
    return 0
