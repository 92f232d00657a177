"""`unip benchmark` and `unip ablation` (issue 12): score pre-trained ViTs on an infrared set over seeds, and run
the NMI-HAD / InfMix ablation with paired comparisons. The work is in `unip_hf.studies.benchmark` and `unip_hf.studies.ablation`;
their budgets, protocols and arms are plain constants, so this module stays light (see `unip_hf.cli.commands`)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from unip_hf.studies.ablation import BASE_ARMS, DOWNSTREAM_PROTOCOLS
from unip_hf.studies.benchmark import BUDGETS, PROTOCOLS, resolve_budget
from unip_hf.argument_checks import check_model_source, non_negative_int
from unip_hf.cli.commands import add_command, flags, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `benchmark` and `ablation` sub-commands.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    register_benchmark(subparsers)
    register_ablation(subparsers)


def _run_benchmark(args: argparse.Namespace) -> int:
    """Run `unip benchmark`; returns the exit status."""
    for model in args.models:
        if not model.startswith("scratch:"):
            check_model_source("models", model)
    budget = resolve_budget(args.budget, args.budget_set)  # a bad field or value: one line, before anything loads
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = load("unip_hf.studies.benchmark").run_benchmark(args.models, args.dataset, args.data_dir, args.out, args.protocols, args.seeds,
                          budget, args.eval_split, attention=not args.no_attention)
    print(open(os.path.join(args.out, "results.md"), encoding="utf-8").read())
    print(f"{len(store.entries)} runs in {os.path.join(args.out, 'results.json')}")
    return 0


def add_budget_argument(parser: argparse.ArgumentParser) -> None:
    """`--budget` with the presets' summary in its help (shared by `unip benchmark` and `unip ablation`)."""
    summary = "; ".join(f"{b.name}: crop {b.crop_size}, fine-tune {b.finetune_steps} steps lr {b.finetune_lr:g}, "
                        f"probe {b.probe_steps} lr {b.probe_lr:g}, layer-wise {b.layerwise_steps} lr {b.layerwise_lr:g}"
                        for b in BUDGETS.values())
    parser.add_argument(*flags("budget"), default="smoke", metavar="PRESET|FILE.json",
                        help=f"a named preset ({summary}), or a JSON file of Budget fields (those it leaves out come "
                             "from its \"base\" preset, default cpu)")
    parser.add_argument(*flags("budget_set"), nargs="+", default=[], metavar="FIELD=VALUE",
                        help="change single budget fields, e.g. finetune_steps=300 pretrain_image_size=128 (recorded "
                             "in results.json; the budget's name records them)")


def register_benchmark(subparsers: argparse._SubParsersAction) -> None:
    """Add the `benchmark` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    p = add_command(
        subparsers, "benchmark", help="score pre-trained ViTs on an infrared set: fine-tuning, linear and layer-wise probes, seeds",
        description="Fine-tune, linearly probe and layer-wise probe each model over seeds at a named budget, run its "
                    "attention analysis, and write results.json, results.md, layerwise.png and nmi_vs_probe.png. A "
                    "re-run with the same --out skips finished runs.")
    p.add_argument(*flags("models"), nargs="+", required=True, metavar="MODEL",
                   help="UNIP checkpoint folders, transformers ViT/ViT-MAE/DeiT/DINOv2/CLIP folders or Hub ids "
                        "(converted), or scratch:PRESET")
    p.add_argument(*flags("dataset"), required=True, help="data set builder name (buffalo-udder, sirst, ...) or folder")
    p.add_argument(*flags("data_dir"), required=True, help="the data set's root folder")
    p.add_argument(*flags("eval_split"), default=None, help="evaluation split (default: val, else test)")
    p.add_argument(*flags("protocols"), nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument(*flags("seeds"), nargs="+", type=non_negative_int, default=[0, 1, 2])
    add_budget_argument(p)
    p.add_argument(*flags("out"), required=True, help="output folder (resumed when it holds results.json)")
    p.add_argument(*flags("no_attention"), action="store_true", help="skip the attention analysis")
    p.set_defaults(func=_run_benchmark)


def _parse_downstream(values: Sequence[str]) -> list[tuple[str, str, str | None]]:
    out = []
    for text in values:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise argparse.ArgumentTypeError(f"--downstream {text!r}: expected NAME:DATA_DIR[:SPLIT]")
        out.append((parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None))
    return out


def _run_ablation(args: argparse.Namespace) -> int:
    """Run `unip ablation`; returns the exit status."""
    check_model_source("teacher", args.teacher)
    check_model_source("student_config", args.student_config, hub_file=None, folder=False)
    budget = resolve_budget(args.budget, args.budget_set)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    datasets = []
    if args.dataset or args.data_dir:
        if not (args.dataset and args.data_dir):
            raise SystemExit("unip ablation: error: --dataset and --data_dir go together")
        datasets.append((args.dataset, args.data_dir, args.eval_split))
    datasets += _parse_downstream(args.downstream or [])
    if not datasets:
        raise SystemExit("unip ablation: error: give --dataset/--data_dir or --downstream NAME:DIR[:SPLIT]")
    store = load("unip_hf.studies.ablation").run_ablation(args.teacher, args.student_preset, args.infmix_root, datasets, args.seeds, budget,
                         args.out, args.arms, args.protocols, student_config=args.student_config)
    print(open(os.path.join(args.out, "results.md"), encoding="utf-8").read())
    print(f"{len(store.entries)} runs in {os.path.join(args.out, 'results.json')}")
    return 0


def register_ablation(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ablation` sub-command.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    p = add_command(
        subparsers, "ablation", help="NMI-HAD / InfMix ablation over seeds, with paired comparisons to the NMI-HAD arm",
        description="Pre-train one student per arm (NMI-HAD, no pre-training, feature distillation, local / global "
                    "teacher layer, InfMix without grayscale or without a source group) and score each by "
                    "fine-tuning and linear probing, over seeds; results.md holds mean ± std and the paired "
                    "comparison with nmi_had. A re-run with the same --out skips finished runs.")
    p.add_argument(*flags("teacher"), required=True, help="ViT-family teacher folder or Hub id")
    p.add_argument(*flags("student_preset"), default="unip-tiny", help="UNIP preset of the student")
    p.add_argument(*flags("student_config"), default=None, help="a UnipConfig json file or folder instead of the preset")
    p.add_argument(*flags("infmix_root"), required=True,
                   help="InfMix root (infrared/<source>/, rgb/<source>/) or manifest (.json/.yaml)")
    p.add_argument(*flags("dataset"), default=None, help="downstream data set builder name")
    p.add_argument(*flags("data_dir"), default=None, help="its root folder")
    p.add_argument(*flags("eval_split"), default=None, help="its evaluation split (default: val, else test)")
    p.add_argument(*flags("downstream"), nargs="+", default=None, metavar="NAME:DIR[:SPLIT]",
                   help="more downstream sets, e.g. buffalo-udder:../shared/data/buffalo-udder:val")
    p.add_argument(*flags("arms"), nargs="+", default=None,
                   help=f"arms to run (default all): {', '.join(BASE_ARMS)}, without_<modality>-<source>")
    p.add_argument(*flags("protocols"), nargs="+", choices=DOWNSTREAM_PROTOCOLS, default=list(DOWNSTREAM_PROTOCOLS))
    p.add_argument(*flags("seeds"), nargs="+", type=int, default=[0, 1, 2])
    add_budget_argument(p)
    p.add_argument(*flags("out"), required=True, help="output folder (resumed when it holds results.json)")
    p.set_defaults(func=_run_ablation)
