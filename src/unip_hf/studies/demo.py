"""`unip demo`: the whole UNIP (Zhang et al., ICLR 2025) downstream path in one command, offline and on CPU.

Without data it writes synthetic thermal scenes, trains a tiny UNIP segmentation model (LL-FPN + UPerNet) on them for
about a minute with a progress bar (and its ETA), evaluating and checkpointing half-way, evaluates it (mIoU printed next to the chance level), saves it with its
processor, reloads it through `pipeline("image-segmentation")` and writes a PNG with the prediction overlaid. With
`--dataset NAME --data_dir DIR` it does the same on a real infrared segmentation set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw
from transformers import pipeline

from unip_hf import register_auto_classes
from unip_hf.data import segmentation_metadata, write_synthetic_dataset
from unip_hf.models.infrared_decoding import decode_intensity, load_infrared_image

__all__: list[str] = []  # the command is registered by unip_hf.cli.commands

#: The tiny model of the synthetic demo (a few hundred thousand parameters, patch 8).
DEMO_MODEL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "decoder_hidden_size": 64,
              "auxiliary_channels": 32}
DEMO_SCENE = {"height": 96, "width": 128}


@dataclass
class DemoResult:
    """What `run_demo` returns: metrics, chance level, where things were written."""

    metrics: dict[str, Any]
    main_metric: str
    chance: dict[str, float]
    model_dir: str
    overlay_path: str
    pipeline_labels: list[str]
    seconds: float


#: Used instead of gray palette entries (binary sets such as SIRST paint targets white), which vanish on gray images.
VIVID = ((255, 40, 40), (255, 210, 0), (0, 200, 255), (120, 255, 60), (255, 0, 200))


def _palette(id2label: dict[int, str], palette: Any) -> list[tuple[int, int, int]]:
    colours = [tuple(int(c) for c in colour) for colour in (palette or [])]
    colours = [colour if index == 0 or max(colour) - min(colour) > 40 else VIVID[(index - 1) % len(VIVID)]
               for index, colour in enumerate(colours)]
    rng = np.random.default_rng(0)
    while len(colours) < len(id2label):
        colours.append(tuple(int(c) for c in rng.integers(40, 255, 3)))
    return colours


def overlay_panels(image: Image.Image, prediction: np.ndarray, id2label: dict[int, str], palette: Any,
                   reference: np.ndarray | None = None, alpha: float = 0.5, scale: int = 1) -> Image.Image:
    """Side-by-side panels: the input, the ground truth overlaid (when given), the prediction overlaid, and a legend.

    Args:
        image (`PIL.Image.Image`): the input (any mode; shown in gray).
        prediction (`np.ndarray`): `(H, W)` class ids at the image size.
        id2label (`dict[int, str]`): class names.
        palette: one RGB triple per class (background is left uncoloured).
        reference (`np.ndarray`, *optional*): ground-truth ids (255 = ignore, shown uncoloured).
        alpha (`float`, *optional*, defaults to 0.5): colour opacity.
        scale (`int`, *optional*, defaults to 1): nearest-neighbour magnification of small images.
    """
    gray = Image.fromarray(np.rint(decode_intensity(image) * 255).astype(np.uint8))
    base = np.asarray(gray.convert("RGB"), dtype=np.float32)
    colours = np.asarray(_palette(id2label, palette), dtype=np.float32)

    def paint(ids: np.ndarray) -> Image.Image:
        out = base.copy()
        for index in range(1, len(colours)):
            where = ids == index
            out[where] = (1 - alpha) * out[where] + alpha * colours[index]
        return Image.fromarray(out.round().astype(np.uint8))

    panels = [("input", gray.convert("RGB"))]
    if reference is not None:
        panels.append(("ground truth", paint(reference)))
    panels.append(("prediction", paint(prediction)))
    width, height = gray.size
    width, height = width * scale, height * scale
    legend_height = 16 * (len(id2label) // 4 + 1) + 4
    canvas = Image.new("RGB", (len(panels) * (width + 8) + 8, height + 28 + legend_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, (title, panel) in enumerate(panels):
        x = 8 + column * (width + 8)
        canvas.paste(panel.resize((width, height), Image.NEAREST), (x, 22))
        draw.text((x, 5), title, fill=(0, 0, 0))
    y = height + 30
    for index, name in sorted(id2label.items()):
        x = 8 + (index % 4) * 120
        row_y = y + 16 * (index // 4)
        colour = tuple(int(c) for c in colours[index]) if index else (0, 0, 0)
        draw.rectangle([x, row_y + 2, x + 10, row_y + 12], fill=colour, outline=(0, 0, 0))
        draw.text((x + 14, row_y + 1), str(name), fill=(0, 0, 0))
    return canvas


def run_demo(out: str = "demo_out", dataset: str | None = None, data_dir: str | None = None, max_steps: int = 120,
             model_name_or_path: str = "none", preset: str = "unip-tiny", crop_size: int | None = None,
             batch_size: int = 8, learning_rate: float | None = None, num_train: int = 64, num_val: int = 8,
             eval_steps: int | None = None, seed: int = 0, quiet: bool = False) -> DemoResult:
    """Train, evaluate, save, reload through `pipeline` and draw one prediction.

    Args:
        out (`str`, *optional*, defaults to `"demo_out"`): output folder (`data/` for synthetic scenes, `model/`, the
            overlay `prediction_overlay.png` and `demo_summary.json`).
        dataset (`str`, *optional*): a `unip_hf.data` builder name (with `data_dir`); synthetic scenes when absent.
        data_dir (`str`, *optional*): the real data set's folder.
        max_steps (`int`, *optional*, defaults to 120): optimizer steps (about a minute of wall time on 2 shared CPU
            cores with one torch thread for the synthetic demo, README "Set up").
        model_name_or_path (`str`, *optional*, defaults to `"none"`): start from this UNIP checkpoint instead of
            random weights.
        preset (`str`, *optional*, defaults to `"unip-tiny"`): size for real data from scratch (the synthetic demo
            uses a 4-block, 64-wide model with patch 8).
        crop_size (`int`, *optional*): training crop (64 synthetic, 128 real by default).
        batch_size (`int`, *optional*, defaults to 8): images per step.
        learning_rate (`float`, *optional*): peak learning rate (1e-3 from scratch, 1e-4 from a checkpoint).
        num_train / num_val (`int`, *optional*): synthetic scenes per split.
        eval_steps (`int`, *optional*): evaluate and save a checkpoint every N steps, so an interrupted demo has
            saved something (default: half of `max_steps`; 0: evaluate at the end only, no checkpoint).
        seed (`int`, *optional*, defaults to 0): seed of the scenes, the views and the model.
        quiet (`bool`, *optional*, defaults to `False`): print less.
    """
    # Deliberately lazy: the fine-tuning stack (its metrics load scipy) is imported when `unip demo` runs, not each
    # time the `unip` command builds its parser (`unip --help`).
    from unip_hf.evaluation.evaluator import chance_metrics, class_frequencies
    from unip_hf.training.finetuning import DataArguments, FinetuningArguments, ModelArguments, run_finetuning
    from unip_hf.data.finetuning_data import EvalSegmentationDataset, dataset_task, load_split, resolve_eval_split

    start = time.perf_counter()
    if (dataset is None) != (data_dir is None):
        raise ValueError("give both --dataset and --data_dir (or neither, for synthetic scenes)")
    os.makedirs(out, exist_ok=True)
    from_scratch = model_name_or_path in (None, "", "none")
    synthetic = dataset is None
    if synthetic:
        data_dir = os.path.join(out, "data")
        dataset = "folder"
        if not os.path.isfile(os.path.join(data_dir, "classes.json")):
            print(f"writing {num_train} + {num_val} synthetic thermal scenes to {data_dir}")
            write_synthetic_dataset(data_dir, num_train=num_train, num_val=num_val, seed=seed, return_dataset=False,
                                    **DEMO_SCENE)
        crop = crop_size or 64
        img_scale = f"{DEMO_SCENE['width']}x{DEMO_SCENE['height']}"
        overrides = json.dumps(DEMO_MODEL) if from_scratch else None
        patch = 8 if from_scratch else None
        ratio = (0.75, 1.5)
    else:
        crop = crop_size or 128
        img_scale = f"{4 * crop}x{crop}"
        overrides, patch, ratio = None, None, (0.5, 2.0)
    if eval_steps is None:
        eval_steps = max(1, max_steps // 2) if max_steps >= 2 else 0
    print(f"training {max_steps} steps (the bar shows the time left); "
          + (f"every {eval_steps} steps an evaluation and a checkpoint in {os.path.join(out, 'model')}"
             if eval_steps else "evaluation at the end"), flush=True)
    cache_dir = os.path.join(out, "hf_cache")
    model_dir = os.path.join(out, "model")
    model_args = ModelArguments(model_name_or_path=model_name_or_path or "none", preset=preset,
                                config_overrides=overrides, patch_size=patch, drop_path_rate=0.0 if synthetic else 0.1)
    data_args = DataArguments(dataset=dataset, data_dir=data_dir, crop_size=crop, img_scale=img_scale,
                              ratio_min=ratio[0], ratio_max=ratio[1], cache_dir=cache_dir)
    train_args = FinetuningArguments(
        output_dir=model_dir, per_device_train_batch_size=batch_size, max_steps=max_steps,
        learning_rate=learning_rate or (1e-3 if from_scratch else 1e-4),
        layer_decay=1.0 if from_scratch else 0.85, warmup_ratio=0.05, eval_steps=eval_steps,
        checkpointing_steps=eval_steps, overwrite_output_dir=True, seed=seed,  # a re-run starts over
    )
    result = run_finetuning(model_args, data_args, train_args)

    # Chance level on the same evaluation images.
    split = resolve_eval_split(dataset, data_dir, None)
    train_split = load_split(dataset, data_dir, "train", cache_dir)
    eval_split = load_split(dataset, data_dir, split, cache_dir)
    meta = segmentation_metadata(eval_split)
    id2label = meta["id2label"]
    eval_dataset = EvalSegmentationDataset(eval_split, None)
    chance = chance_metrics(eval_dataset, dataset_task(dataset), len(id2label), seed=seed,
                            class_frequencies=class_frequencies(train_split, len(id2label)))
    value = result.metrics[result.main_metric]
    print(f"\n{result.main_metric} on {dataset if not synthetic else 'synthetic'} {split}: {value * 100:.1f} "
          f"(chance level {chance['chance'] * 100:.1f}: majority class {chance['majority'] * 100:.1f}, random guess "
          f"with the training class frequencies {chance['random'] * 100:.1f})")

    # Reload through the stock pipeline (UNIP registered with the Auto classes) and draw one prediction.
    register_auto_classes()
    segmenter = pipeline("image-segmentation", model=model_dir)
    undecoded = datasets.Image(decode=False)
    raw = eval_split.cast_column("image", undecoded).cast_column("label", undecoded)
    example = raw[0]
    image = load_infrared_image(example["image"])
    reference = np.asarray(load_infrared_image(example["label"]), dtype=np.int64)
    segments = segmenter(image.convert("L") if image.mode not in ("L", "RGB") else image)
    label2id = {name: index for index, name in id2label.items()}
    prediction = np.zeros((image.size[1], image.size[0]), dtype=np.int64)
    for segment in segments:
        prediction[np.asarray(segment["mask"]) > 127] = label2id[segment["label"]]
    scale = max(1, 384 // max(image.size))
    overlay = overlay_panels(image, prediction, id2label, meta.get("palette"), reference, scale=scale)
    overlay_path = os.path.join(out, "prediction_overlay.png")
    overlay.save(overlay_path)
    labels = [segment["label"] for segment in segments]
    seconds = time.perf_counter() - start
    summary = {"main_metric": result.main_metric, "value": value, "chance": chance, "metrics": result.metrics,
               "steps": result.global_step, "model_dir": model_dir, "overlay": overlay_path,
               "pipeline_labels": labels, "seconds": seconds, "dataset": "synthetic" if synthetic else dataset}
    with open(os.path.join(out, "demo_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(f"pipeline('image-segmentation', model={model_dir!r}) found: {', '.join(labels)}")
    print(f"overlay written to {overlay_path}; total {seconds:.0f} s")
    return DemoResult(result.metrics, result.main_metric, chance, model_dir, overlay_path, labels, seconds)


def command_demo(args: argparse.Namespace) -> int:
    """Run `unip demo`; returns the exit status."""
    run_demo(out=args.out, dataset=args.dataset, data_dir=args.data_dir, max_steps=args.max_steps,
             model_name_or_path=args.model_name_or_path, preset=args.preset, crop_size=args.crop_size,
             batch_size=args.batch_size, learning_rate=args.learning_rate, eval_steps=args.eval_steps, seed=args.seed)
    return 0


