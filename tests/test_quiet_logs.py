"""Quieter logs: the stock pipeline's "not supported" list for UNIP models, log records not cutting the progress bar."""

import logging
import re
import sys

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import unip_hf  # noqa: F401  (registers the classes and the log filter)
from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipImageProcessor


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class KeyedData(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        return self.data[key[1]]


@pytest.fixture
def checkpoint(tmp_path):
    config = UnipConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=2, decode_head="linear_probe")
    UnipForSemanticSegmentation(config).save_pretrained(tmp_path)
    UnipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    return str(tmp_path)


def test_stock_pipeline_does_not_list_the_supported_models(checkpoint, monkeypatch):
    from transformers import pipeline

    from unip_hf.models.pipeline_unip import _RegisteredModelCheckFilter

    base = logging.getLogger("transformers.pipelines.base")
    collect = _Collect()
    base.addHandler(collect)
    try:
        for _ in range(2):
            segmenter = pipeline("image-segmentation", model=checkpoint)
        assert not [m for m in collect.messages if "is not supported" in m], collect.messages
        assert segmenter(Image.new("L", (40, 32), 90))  # and it works
        # the message for other models still passes, and transformers does still emit it for UNIP without the filter
        base.error("The model 'SomeOtherModel' is not supported for image-segmentation. Supported models are [...]")
        assert collect.messages[-1].startswith("The model 'SomeOtherModel'")
        monkeypatch.setattr(base, "filters", [f for f in base.filters if not isinstance(f, _RegisteredModelCheckFilter)])
        pipeline("image-segmentation", model=checkpoint)
        assert any(m.startswith("The model 'UnipForSemanticSegmentation' is not supported") for m in collect.messages)
    finally:
        base.removeHandler(collect)


def test_log_records_do_not_cut_the_progress_bar(tmp_path, capsys, fresh_accelerate_state):
    from accelerate import Accelerator

    from unip_hf.training.loop import train_loop
    from unip_hf.training.optimization import create_optimizer, create_scheduler
    from unip_hf.training.sampler import EpochSampler

    accelerator = Accelerator(cpu=True)
    model = nn.Linear(4, 1)
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    sampler = EpochSampler(8, seed=0)  # yields (epoch, index) keys
    loader = DataLoader(KeyedData(data), batch_size=2, sampler=sampler, drop_last=True)
    optimizer = create_optimizer(model, 0.01)
    scheduler = create_scheduler("cosine", optimizer, 0, 3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    handler = logging.StreamHandler(sys.stderr)  # a console handler, as `logging.basicConfig` installs
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        train_loop(accelerator, model, optimizer, scheduler, loader, sampler, lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1]), 3, str(tmp_path),
                   on_step_end=lambda step, logs: logging.getLogger("accelerate.checkpointing").info(
                       "Saving current state to step-%d", step))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "Saving current state to step-" in line]
    assert len(lines) == 3, err
    for line in lines:  # each record starts its own line: no bar text before it (tqdm clears the bar, then writes;
        # a cursor move, "ESC [A", precedes the text when a bar left by an earlier test still holds a screen line)
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.split("\r")[-1])
        assert text.startswith("INFO accelerate.checkpointing: Saving current state"), repr(line)
    assert "3/3" in err  # the bar is still drawn
