"""`unip space create` / `unip space push`: a Gradio Space that gives a UNIP model a live demo on the Hub.

The Hub's inference widgets do not run models with custom code, so the way to let people try a UNIP model in the
browser is a Space. `create_space` writes one folder:

- `app.py`: the Gradio app (shipped as `unip_hf/deploy/space_template/app.py`), which keeps 16-bit inputs, shows the
  intensity the model sees, the prediction overlaid in the class colours with a legend, the per-class pixel shares,
  and for small-target models the target list and a threshold slider. It loads the model with `unip_hf` when that is
  installed and through `trust_remote_code=True` otherwise (the saved model folders carry the UNIP code);
- `space_config.json`: what the app shows (model, title, task, class names and colours, examples);
- `requirements.txt` and a `README.md` whose YAML header is the Space metadata (sdk, sdk_version, app_file, models);
- `examples/`: the example images, and `model/`: a copy of a local model folder (a Hub id is referenced instead).

`push_space` creates the Space repo (`sdk: gradio`) and uploads the folder with `hub.push_to_hub`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import SpaceCard, SpaceCardData
from transformers import AutoConfig

from unip_hf.studies.demo import _palette
from unip_hf.hub.upload import list_upload_files, missing_remote_code, push_to_hub
from unip_hf.models.infrared_decoding import load_infrared_image
from unip_hf.evaluation.model_saving import task_head_problem

__all__: list[str] = []  # the command is registered by unip_hf.cli.commands

#: The largest image the app processes by default (millions of pixels; `space_config.json` `max_pixels`).
DEFAULT_MAX_MEGAPIXELS = 2.0
#: The Gradio version the app is written and tested against (the Space's `sdk_version`, pinned in requirements).
GRADIO_VERSION = "6.31.0"
TEMPLATE = Path(__file__).with_name("space_template") / "app.py"
REQUIREMENTS = [
    f"gradio=={GRADIO_VERSION}",
    "torch>=2.3",
    "transformers>=5.0,<6",
    "huggingface-hub>=1.0",
    "numpy>=1.24",
    "pillow>=10.0",
    "scipy>=1.10",
]


def _is_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def _resolve_model(source: str) -> tuple[Path | None, str | None]:
    """(local folder, None) or (None, Hub id); a clear error for anything else."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"MODEL_DIR {source} has no config.json: give a folder written by save_pretrained")
        return path, None
    if path.exists():
        raise NotADirectoryError(f"MODEL_DIR {source} is a file; give a saved model folder or a Hub id (user/name)")
    if _is_hub_id(source):
        return None, source
    raise FileNotFoundError(f"MODEL_DIR_OR_HUB_ID {source!r} is neither a folder nor a Hub id of the form user/name")


def _class_info(config: Any) -> tuple[dict[int, str], list[list[int]]]:
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    # no data-set palette in the config: gray placeholders, which `_palette` replaces with the vivid colours
    palette = getattr(config, "palette", None) or [(0, 0, 0)] * len(id2label)
    return id2label, [list(colour) for colour in _palette(id2label, palette)]


def _task(config: Any, task: str) -> str:
    if task not in ("auto", "semantic", "irstd"):
        raise ValueError(f"--task must be auto, semantic or irstd, got {task!r}")
    if task != "auto":
        return task
    saved = getattr(config, "task", None)
    if saved in ("semantic", "irstd"):
        return saved
    return "irstd" if getattr(config, "num_labels", 0) == 2 else "semantic"


def _copy_examples(examples: Sequence[str], folder: Path) -> list[str]:
    names: list[str] = []
    for example in examples:
        source = Path(example)
        if not source.is_file():
            raise FileNotFoundError(f"--examples: {example} is not a file")
        try:
            load_infrared_image(str(source))
        except Exception as error:  # any decoding failure: name the file
            raise ValueError(f"--examples: {example} is not an image the processor can read ({error})") from error
        name, index = source.name, 1
        while name in names:
            name, index = f"{source.stem}_{index}{source.suffix}", index + 1
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / name).exists() or not (folder / name).samefile(source):  # --overwrite with its own examples
            shutil.copyfile(source, folder / name)
        names.append(name)
    return [f"examples/{name}" for name in names]


def _space_readme(title: str, hub_id: str | None, license: str, emoji: str, description: str) -> str:
    data = SpaceCardData(
        title=title, sdk="gradio", sdk_version=GRADIO_VERSION, app_file="app.py", license=license,
        models=[hub_id] if hub_id else None, emoji=emoji, colorFrom="indigo", colorTo="red", pinned=False,
        short_description="UNIP infrared segmentation: upload a thermal image",
        tags=["infrared", "thermal", "unip", "image-segmentation"],
    )
    model = f"[`{hub_id}`](https://huggingface.co/{hub_id})" if hub_id else "the model in `model/`"
    body = (
        f"# {title}\n\n{description}\n\n"
        f"Upload an infrared image (8- or 16-bit PNG/TIFF, gray, RGB or palette; 16 bits are kept). The app shows the "
        f"intensity the model sees, the prediction of {model} overlaid in the class colours with a legend, the share "
        "of pixels per class and, for small-target models, the list of targets (centroid, area, score) with a "
        "threshold slider. It runs on CPU.\n\n"
        "Written by `unip space create` ([unip_hf](https://arxiv.org/abs/2502.02257): UNIP, ICLR 2025).\n"
    )
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it, links resolved."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def create_space(model: str, out_dir: str | os.PathLike, *, title: str | None = None,
                 examples: Sequence[str] = (), task: str = "auto", emoji: str = "🔥",
                 license: str = "apache-2.0", overwrite: bool = False,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Path:
    """Write a Gradio Space folder for a UNIP segmentation model.

    Args:
        model (`str`): A saved model folder (copied into `model/`; it must carry the UNIP remote code) or a Hub id.
        out_dir (`str` or `PathLike`): The Space folder to write.
        title (`str`, *optional*): The Space title; defaults to the model's name.
        examples (`Sequence[str]`, *optional*): Image files copied into `examples/` and offered as examples.
        task (`str`, *optional*, defaults to `"auto"`): `"irstd"` (small targets: target list and threshold),
            `"semantic"`, or `"auto"` (the config's `task`, else `"irstd"` for two classes).
        emoji (`str`, *optional*): The Space's emoji.
        license (`str`, *optional*, defaults to `"apache-2.0"`): The Space's licence.
        overwrite (`bool`, *optional*, defaults to `False`): Write into a non-empty `out_dir` (never one that is,
            holds or lies inside the model folder).
        max_megapixels (`float`, *optional*, defaults to 2): The largest image the app processes (width x height,
            in millions of pixels), checked from the file's header before decoding; larger uploads get a message.

    Returns:
        `Path`: the Space folder.

    Raises:
        ValueError: `out_dir` is, holds or lies inside the model folder (the Space's `README.md` would replace the
            model card, `--overwrite` would delete the model it copies); a `max_megapixels` that is not positive.
        FileExistsError: a non-empty `out_dir` without `overwrite`.
    """
    if not max_megapixels > 0:
        raise ValueError(f"--max_megapixels must be > 0, got {max_megapixels!r}")
    local, hub_id = _resolve_model(model)
    out = Path(out_dir)
    if local is not None and (_inside(out, local) or _inside(local, out)):
        relation = "is" if out.resolve() == local.resolve() else "lies inside" if _inside(out, local) else "holds"
        raise ValueError(
            f"OUT_DIR {out} {relation} the model folder {local}: writing the Space there would replace the model's "
            "files (its README.md model card) or, with --overwrite, delete the model it copies into OUT_DIR/model. "
            "Choose an OUT_DIR outside the model folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"OUT_DIR {out} is not empty; choose another folder or pass --overwrite")
    if local is not None:
        missing = missing_remote_code(local)
        if missing:
            raise FileNotFoundError(
                f"{local} lacks the remote code files {missing}, which the Space needs to load the model without "
                "unip_hf; save it again with save_pretrained")
        problem = task_head_problem(str(local))
        if problem:  # the Space would show a random head's predictions
            raise ValueError(f"MODEL_DIR {problem}")
        if not (local / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"{local} has no preprocessor_config.json; save the UnipImageProcessor with it")
    try:  # the UNIP config class is registered with AutoConfig by importing this package
        config = AutoConfig.from_pretrained(str(local) if local else hub_id)
    except OSError as error:  # a Hub id while offline: the app reads the classes when it starts
        if local is not None:
            raise
        print(f"could not read the config of {hub_id} ({error}); class names and colours are read when the app starts")
        config = None
    out.mkdir(parents=True, exist_ok=True)
    if local is not None:
        target = out / "model"
        if target.exists():
            shutil.rmtree(target)
        for name in list_upload_files(local):  # without checkpoints, optimizer states and logs
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local / name, target / name)
    id2label, palette = _class_info(config) if config is not None else ({}, [])
    name = title or (hub_id.split("/")[-1] if hub_id else local.resolve().name)
    description = "UNIP infrared segmentation: upload a thermal image and see the prediction."
    settings = {
        "model": "model" if local is not None else hub_id,
        "title": name,
        "description": description,
        "task": _task(config, task) if config is not None else ("irstd" if task == "auto" else task),
        "id2label": {str(k): v for k, v in id2label.items()},
        "palette": palette,
        "examples": _copy_examples(examples, out / "examples"),
        "max_pixels": int(round(max_megapixels * 1e6)),
    }
    if settings["task"] not in ("semantic", "irstd"):
        raise ValueError(f"--task must be auto, semantic or irstd, got {task!r}")
    (out / "space_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(TEMPLATE, out / "app.py")
    (out / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_space_readme(name, hub_id, license, emoji, description), encoding="utf-8")
    return out


def push_space(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None):
    """Create the Space `repo_id` (`sdk: gradio`) when needed and upload a folder written by `create_space`.

    Returns:
        The `CommitInfo` of the upload.
    """
    folder = Path(folder)
    for name in ("app.py", "README.md", "requirements.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: write the Space with `unip space create` first")
    if not _is_hub_id(repo_id):
        raise ValueError(f"Space id must look like user/space-name, got {repo_id!r}")
    return push_to_hub(folder, repo_id, repo_type="space", space_sdk="gradio", private=private, token=token,
                       commit_message="Upload Space with unip_hf", ignore_patterns=["__pycache__/**", "*.pyc",
                                                                                     "flagged/**", ".gradio/**"])


def _usage_error(args: argparse.Namespace, error: Exception) -> int:
    """A refused `unip space` command: argparse's `error:` line on stderr, exit status 2, no traceback."""
    parser = getattr(args, "command_parser", None)
    if parser is not None:
        parser.error(str(error))
    print(f"error: {error}")
    return 2


def command_space_create(args: argparse.Namespace) -> int:
    try:
        out = create_space(args.model, args.out_dir, title=args.title, examples=args.examples or (), task=args.task,
                           license=args.license, overwrite=args.overwrite,
                           max_megapixels=getattr(args, "max_megapixels", DEFAULT_MAX_MEGAPIXELS))
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as error:
        return _usage_error(args, error)
    print(f"Space written to {out}; try it with `cd {out} && python app.py`, publish it with "
          f"`unip space push {out} user/space-name`")
    return 0


def command_space_push(args: argparse.Namespace) -> int:
    push_space(args.folder, args.space_id, private=args.private or None)
    print(f"pushed {args.folder} to https://huggingface.co/spaces/{args.space_id}")
    return 0


