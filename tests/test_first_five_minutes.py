"""Regression tests of issue 22 ("the first five minutes and every command after"): what a newcomer meets in the
first commands (the demo, mistyped paths, bad choices, one-seed ablations, noisy logs, file modes, budgets). Tiny
models and subprocesses of the `unip` command; no timing assertions."""

import os
import stat
import subprocess
import sys

import pytest

from test_checkpoints import tiny_run
from unip_hf import UnipConfig, UnipViTModel


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# -- item 8: weights written with the umask's mode ---------------------------------------------------------------


def test_saved_model_weights_have_the_same_mode_as_the_other_files(tmp_path):
    """Guards issue 22 item 8: safetensors writes through a private temporary file, so `model.safetensors` came out
    0600 next to 0644 JSON files (a shared model folder unreadable to the group)."""
    model = UnipViTModel(UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path)
    assert _mode(tmp_path / "model.safetensors") == _mode(tmp_path / "config.json") == _umask_mode()


def test_checkpoint_files_have_the_umask_mode(tmp_path):
    """Guards issue 22 item 8 for training checkpoints (model, optimizer and scheduler state files)."""
    tiny_run(tmp_path, 2, checkpointing_steps=2)
    folder = tmp_path / "checkpoint-2"
    weights = [name for name in os.listdir(folder) if name.endswith(".safetensors")]
    assert weights
    assert {_mode(folder / name) for name in weights} == {_umask_mode()}
