"""Publishing UNIP (Zhang et al., ICLR 2025) data sets: InfMix as parquet with YAML ``configs:`` for the Hub.

`export_parquet` writes ``DIR/<config>/train-XXXXX-of-YYYYY.parquet`` and a README whose YAML lists every config
folder present, so that ``load_dataset(DIR_or_repo, "<config>")`` reads it; `push_to_hub` uploads that folder.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import datasets
from huggingface_hub import HfApi

__all__: list[str] = []  # nothing here is documented API; the package's own modules import what they need


def export_parquet(dataset: datasets.Dataset, out_dir: str, config_name: str, split: str = "train",
                   max_shard_rows: int = 5000, report: Optional[dict] = None) -> list[str]:
    """Write one config/split as parquet shards under ``out_dir/config_name`` and refresh the README.

    Args:
        dataset: the built data set (images stored as bytes).
        out_dir: export folder (may already hold other configs).
        config_name: the config's name (folder name and YAML ``config_name``).
        split: split name used in the file names.
        max_shard_rows: rows per parquet file.
        report: InfMix build report, saved as ``<config>/report.json`` and summarised in the README.

    Returns:
        The written parquet paths.
    """
    cdir = os.path.join(out_dir, config_name)
    os.makedirs(cdir, exist_ok=True)
    for old in os.listdir(cdir):
        if old.startswith(f"{split}-") and old.endswith(".parquet"):
            os.remove(os.path.join(cdir, old))
    n = max(1, -(-len(dataset) // max_shard_rows))
    paths = []
    for i in range(n):
        path = os.path.join(cdir, f"{split}-{i:05d}-of-{n:05d}.parquet")
        dataset.shard(num_shards=n, index=i, contiguous=True).to_parquet(path)
        paths.append(path)
    if report is not None:
        with open(os.path.join(cdir, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    write_dataset_readme(out_dir)
    return paths


def write_dataset_readme(out_dir: str, title: str = "InfMix") -> str:
    """(Re)write ``out_dir/README.md`` with YAML ``configs:`` for every config folder holding parquet files."""
    configs = []
    for name in sorted(os.listdir(out_dir)):
        cdir = os.path.join(out_dir, name)
        if not os.path.isdir(cdir):
            continue
        splits = sorted({f.split("-")[0] for f in os.listdir(cdir) if f.endswith(".parquet")})
        if splits:
            configs.append((name, splits))
    lines = ["---", "configs:"]
    for name, splits in configs:
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {s}\n    path: {name}/{s}-*.parquet" for s in splits]
    lines += ["tags:", "- infrared", "- thermal", "- unip", "---", "", f"# {title}", "",
              "UNIP pre-training mix (Zhang et al., ICLR 2025) built with `unip infmix build`. Load a configuration with",
              "`datasets.load_dataset(\"<repo>\", \"<config>\")`.", ""]
    for name, _ in configs:
        rpath = os.path.join(out_dir, name, "report.json")
        if os.path.exists(rpath):
            with open(rpath, encoding="utf-8") as f:
                rep = json.load(f)
            lines += [f"## {name}", "", "| source | modality | files | kept | duplicates | unreadable |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['source']} | {r['modality']} | {r['files']} | {r['kept']} | {r['duplicates']} | {r['unreadable']} |"
                      for r in rep.get("sources", [])]
            lines.append("")
    path = os.path.join(out_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def push_to_hub(folder: str, repo_id: str, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Upload InfMix (unip infmix build)") -> str:
    """Create the dataset repo if needed and upload the export folder (parquet shards, reports, README).

    Returns:
        The commit URL (or the repo id when the hub client returns no URL).
    """
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message=commit_message,
                             allow_patterns=["*.parquet", "*.json", "README.md"])
    return str(getattr(info, "commit_url", None) or info or repo_id)
