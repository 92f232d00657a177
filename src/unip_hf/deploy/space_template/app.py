"""Gradio app of a UNIP infrared segmentation Space (written by `unip space create`).

Runs on CPU. The model is loaded with `unip_hf` when that package is installed and through `trust_remote_code=True`
otherwise (the saved model folder carries the UNIP code). Uploads go through `gr.File`, so 16-bit PNG/TIFF files reach
the processor with their 16 bits (a `gr.Image` input would convert them to 8-bit RGB). `space_config.json` next to this
file names the model (a folder relative to it, or a Hub id), the title, the task ("irstd": small targets, with a
threshold and the target list) and the class names and colours.

Limits (so that one upload cannot hold the Space for everyone): an image of more than `max_pixels` pixels
(`space_config.json`, default `DEFAULT_MAX_PIXELS`, 2 megapixels) is refused from its header, before its pixels are
decoded (a 61 KB PNG can declare 9000x7000 pixels), and uploads above `MAX_FILE_SIZE` are refused by the server. Every
error reaches the user as a message naming the file and what is wrong (`answer`), never as a bare "Error".
"""

from __future__ import annotations

import html
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "space_config.json").read_text(encoding="utf-8"))
#: Used when the config carries no class colours.
VIVID = ((255, 40, 40), (255, 210, 0), (0, 200, 255), (120, 255, 60), (255, 0, 200))
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
ALPHA = 0.5
#: Largest image (width x height) the app decodes unless `space_config.json` says otherwise: 2 megapixels, e.g.
#: 1600x1200 or a 1280x1024 thermal frame. Small-target models run at the image's full resolution, so the cost of a
#: request grows with its pixels.
DEFAULT_MAX_PIXELS = 2_000_000
MAX_PIXELS = int(CONFIG.get("max_pixels") or DEFAULT_MAX_PIXELS)
#: Largest upload the server accepts.
MAX_FILE_SIZE = "50mb"
_LOADED: dict = {}


def model_source() -> str:
    source = CONFIG["model"]
    local = HERE / source
    return str(local) if local.is_dir() else source


def load():
    """(model, processor), loaded once; with `unip_hf` when installed, else through the model's remote code."""
    if not _LOADED:
        try:
            import unip_hf  # noqa: F401  (registers the UNIP classes with the Auto classes)

            remote = False
        except ImportError:
            remote = True
        source = model_source()
        model = AutoModelForSemanticSegmentation.from_pretrained(source, trust_remote_code=remote).eval()
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=remote)
        _LOADED.update(model=model, processor=processor, remote=remote)
    return _LOADED["model"], _LOADED["processor"]


def class_names(model) -> dict[int, str]:
    saved = CONFIG.get("id2label") or model.config.id2label
    return {int(k): str(v) for k, v in saved.items()}


def class_colours(count: int) -> list[tuple[int, int, int]]:
    colours = [tuple(int(c) for c in colour) for colour in CONFIG.get("palette") or []]
    while len(colours) < count:
        colours.append((0, 0, 0) if not colours else VIVID[(len(colours) - 1) % len(VIVID)])
    return colours


def check_size(path: str) -> tuple[int, int]:
    """`(width, height)` of an image file from its header (no pixel decoded); `ValueError` with a readable reason
    for a file that is not an image or has more than `MAX_PIXELS` pixels."""
    name = Path(path).name
    try:
        with Image.open(path) as opened:  # lazy: reads the header only
            width, height = opened.size
    except Image.DecompressionBombError:
        raise ValueError(f"{name}: declares far more pixels than any image this Space processes "
                         f"(at most {MAX_PIXELS / 1e6:g} megapixels); crop or downscale it") from None
    except Exception as error:  # noqa: BLE001 - whatever PIL raises, the user learns the file is not an image
        raise ValueError(f"{name}: not an image this Space can read ({type(error).__name__}: {error})") from None
    if width * height > MAX_PIXELS:
        raise ValueError(f"{name}: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is more than "
                         f"this Space processes ({MAX_PIXELS / 1e6:g} megapixels); crop or downscale it, or run "
                         "the model locally")
    return width, height


def read_image(path: str, processor) -> Image.Image:
    """The upload as the processor reads files: mode and bit depth kept (16-bit stays `I;16`)."""
    check_size(path)
    loader = getattr(sys.modules[type(processor).__module__], "load_infrared_image", None)
    if loader is not None:
        return loader(path)
    image = Image.open(path)
    image.load()
    return image


def probabilities(model, processor, image: Image.Image) -> np.ndarray:
    """Class probabilities `(num_labels, H, W)` at the image size (the processor's evaluation resize and padding)."""
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    size = [(image.size[1], image.size[0])]
    if hasattr(processor, "resize_logits"):
        logits = processor.resize_logits(outputs, size)[0]
    else:  # processors saved before `resize_logits` existed: plain bilinear resize
        logits = torch.nn.functional.interpolate(outputs.logits.float(), size=size[0], mode="bilinear",
                                                 align_corners=False)[0]
    return logits.float().softmax(dim=0).numpy()


def find_targets(foreground: np.ndarray, mask: np.ndarray) -> list[list]:
    """8-connected components of `mask` (as the IRSTD metric counts targets): centroid, area, peak score."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    ids = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(foreground), labels, ids)
    centroids = ndimage.center_of_mass(np.ones_like(foreground), labels, ids)
    scores = ndimage.maximum(foreground, labels, ids)
    return [[index + 1, round(float(col), 1), round(float(row), 1), int(area), round(float(score), 3)]
            for index, ((row, col), area, score) in enumerate(zip(centroids, areas, scores))]


def overlay(gray: np.ndarray, prediction: np.ndarray, colours, targets=()) -> Image.Image:
    """The intensity in gray with each non-background class blended in its colour; targets ringed."""
    out = np.repeat((gray * 255.0)[..., None], 3, axis=2).astype(np.float32)
    for index in range(1, len(colours)):
        where = prediction == index
        out[where] = (1 - ALPHA) * out[where] + ALPHA * np.asarray(colours[index], dtype=np.float32)
    picture = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _, x, y, area, _ in targets:
        radius = max(4.0, float(np.sqrt(area)) + 3.0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=tuple(colours[1]), width=1)
    return picture


def legend_html(names: dict[int, str], colours, shares: dict[int, float]) -> str:
    items = []
    for index, name in sorted(names.items()):
        colour = colours[index] if index else (0, 0, 0)
        items.append(
            f'<span class="unip-legend-item" style="margin-right:1.2em;white-space:nowrap">'
            f'<span style="display:inline-block;width:0.9em;height:0.9em;border:1px solid #000;'
            f'background:rgb{tuple(colour)};margin-right:0.3em;vertical-align:middle"></span>'
            f'{html.escape(name)} ({shares.get(index, 0.0):.2f}%)</span>')
    return f'<div id="unip-legend">{"".join(items)}</div>'


def default_threshold() -> float:
    """The model's saved operating point (`config.target_threshold`, chosen on a validation split for a target Fa),
    else 0.5; 0.5 before the model is loaded."""
    model = _LOADED.get("model")
    return float(getattr(model.config, "target_threshold", 0.5) or 0.5) if model is not None else 0.5


def predict(path, threshold: float | None = None):
    """Everything the app shows for one upload (`threshold`: default the model's saved operating point).

    Returns:
        `(intensity, overlay, legend_html, shares_rows, target_rows)`: the intensity the model sees (8-bit gray PIL
        image), the prediction overlaid (RGB, the input size), the legend, `[class, pixels, share %]` rows and
        `[#, x, y, area, score]` rows (small-target models; empty otherwise).
    """
    if not path:
        raise ValueError("upload an image first")
    path = getattr(path, "name", path)
    model, processor = load()
    threshold = default_threshold() if threshold is None else threshold
    image = read_image(str(path), processor)
    gray = processor.to_intensity(image)
    probs = probabilities(model, processor, image)
    names = class_names(model)
    colours = class_colours(max(len(names), probs.shape[0]))
    targets = []
    if CONFIG.get("task") == "irstd":
        foreground = 1.0 - probs[0]
        mask = foreground > float(threshold)
        prediction = np.where(mask, probs[1:].argmax(axis=0) + 1, 0) if probs.shape[0] > 2 else mask.astype(np.int64)
        targets = find_targets(foreground, mask)
    else:
        prediction = probs.argmax(axis=0)
    counts = np.bincount(prediction.ravel(), minlength=len(names))
    total = max(int(counts.sum()), 1)
    shares = {index: 100.0 * int(counts[index]) / total for index in names}
    rows = [[names[index], int(counts[index]), round(shares[index], 2)] for index in sorted(names)]
    intensity = Image.fromarray(np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8), mode="L")
    return intensity, overlay(gray, prediction, colours, targets), legend_html(names, colours, shares), rows, targets


def answer(path, threshold: float = 0.5):
    """`predict` for the web page: any failure becomes a message the user can read (`gr.Error`, or `ValueError` where
    gradio is absent), naming the file and the reason."""
    try:
        return predict(path, threshold)
    except Exception as error:  # noqa: BLE001 - shown to the user instead of gradio's bare "Error"
        message = str(error) or type(error).__name__
        if not isinstance(error, ValueError):
            name = Path(str(getattr(path, "name", path) or "")).name
            message = f"{name}: the model could not process this image ({type(error).__name__}: {message})"
        try:
            import gradio as gr
        except ImportError:
            raise ValueError(message) from error
        raise gr.Error(message) from error


def build_demo():
    import gradio as gr  # only here: the app's helpers (and their tests) run without gradio installed

    small_targets = CONFIG.get("task") == "irstd"
    examples = [str(HERE / name) for name in CONFIG.get("examples") or [] if (HERE / name).is_file()]
    with gr.Blocks(title=CONFIG.get("title", "UNIP")) as demo:
        gr.Markdown(f"# {CONFIG.get('title', 'UNIP')}\n\n{CONFIG.get('description', '')} 8- and 16-bit PNG/TIFF, "
                    "gray, RGB or palette images are accepted (16 bits are kept), up to "
                    f"{MAX_PIXELS / 1e6:g} megapixels. Runs on CPU.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Infrared image", type="filepath", elem_id="unip-upload",
                                 file_types=["image", ".tif", ".tiff", ".png"])
                threshold = gr.Slider(0.01, 0.999, value=default_threshold(), step=0.001,
                                      label="Target threshold (starts at the model's operating point)",
                                      visible=small_targets, elem_id="unip-threshold")
                run = gr.Button("Run", variant="primary", elem_id="unip-run")
                if examples:
                    gr.Examples(examples=examples, inputs=upload)
            with gr.Column():
                seen = gr.Image(label="Input as seen by the model (intensity)", type="pil", elem_id="unip-intensity",
                                interactive=False)
                shown = gr.Image(label="Prediction", type="pil", elem_id="unip-overlay", interactive=False)
                legend = gr.HTML(elem_id="unip-legend-box")
        shares = gr.Dataframe(headers=["class", "pixels", "share %"], label="Pixels per class", interactive=False,
                              elem_id="unip-shares")
        targets = gr.Dataframe(headers=["#", "x", "y", "area", "score"], label="Targets (8-connected components)",
                               interactive=False, visible=small_targets, elem_id="unip-targets")
        outputs = [seen, shown, legend, shares, targets]
        run.click(answer, inputs=[upload, threshold], outputs=outputs)
        upload.upload(answer, inputs=[upload, threshold], outputs=outputs)
        threshold.release(answer, inputs=[upload, threshold], outputs=outputs)
    demo.queue(max_size=32)  # requests wait their turn (each bounded by MAX_PIXELS) instead of piling up
    return demo


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    load()
    build_demo().launch(max_file_size=MAX_FILE_SIZE)
