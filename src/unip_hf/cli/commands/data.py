"""`unip infmix build` and `unip data inspect` (the work is in `unip_hf.cli.run_data`, imported when the command
runs)."""

from __future__ import annotations

import argparse

from unip_hf.argument_checks import non_negative_int
from unip_hf.cli.commands import add_command, flags, load


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `infmix build` and `data inspect` sub-commands.

    Args:
        subparsers: The `add_subparsers()` object of the `unip` parser.
    """
    inf = add_command(subparsers, "infmix", help="InfMix pre-training mix")
    inf_sub = inf.add_subparsers(dest="infmix_command", metavar="ACTION", required=True)
    b = add_command(inf_sub, "build", help="build an InfMix configuration from a root folder or a manifest")
    b.add_argument("root_or_manifest", help="ROOT with infrared/<source>/ and rgb/<source>/, or a .yaml/.json manifest")
    b.add_argument("--config", default="full", help="full | no_grayscale | infrared_only")
    b.add_argument(*flags("include_sources"), default=None, help="comma-separated sources to keep")
    b.add_argument(*flags("exclude_sources"), default=None, help="comma-separated sources to drop")
    b.add_argument("--output", required=True, help="output folder")
    b.add_argument("--format", choices=("arrow", "parquet"), default="arrow",
                   help="arrow: save_to_disk (load_from_disk); parquet: DIR/<config>/*.parquet + README (load_dataset)")
    b.add_argument(*flags("cache_dir"), default=None, help="datasets cache for the build (default: a temporary folder)")
    b.add_argument(*flags("push_to_hub"), default=None, metavar="REPO",
                   help="upload to this dataset repo (implies the parquet export)")
    b.add_argument("--private", action="store_true", help="create the Hub repo as private")
    b.set_defaults(func=_run_infmix_build)

    data = add_command(subparsers, "data", help="segmentation / image data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    i = add_command(data_sub, "inspect", help="class histogram, size/mode summary and a contact sheet")
    i.add_argument("dataset", help="a layout name (sirst, irstd-1k, buffalo-udder, massmind, soda, mfnet, scut-seg, "
                                    "nudt-sirst, folder) with --data_dir, or a save_to_disk folder")
    i.add_argument(*flags("data_dir"), dest="data_dir", default=None, help="the data set's root folder")
    i.add_argument("--split", default="train", help="the split to inspect")
    i.add_argument("--out", default="inspect_out", help="folder for summary.json and contact_sheet.png")
    i.add_argument(*flags("max_images"), type=non_negative_int, default=16, help="images on the contact sheet")
    i.add_argument(*flags("cache_dir"), default=None, help="datasets cache folder")
    i.set_defaults(func=_run_data_inspect)


def _run_infmix_build(args: argparse.Namespace) -> int:
    return load("unip_hf.cli.run_data").command_infmix_build(args)


def _run_data_inspect(args: argparse.Namespace) -> int:
    return load("unip_hf.cli.run_data").command_data_inspect(args)
