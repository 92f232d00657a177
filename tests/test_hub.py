"""Tests of the UNIP Hub helpers: cards, eval results files and a push with `HfApi` patched (no network)."""

import json

import numpy as np
import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard, parse_eval_result_entries
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

import unip_hf
from unip_hf.hub.cards import make_dataset_card, make_model_card, template_path
from unip_hf.hub.results import BenchmarkResult, PretrainingSummary, headline_metrics, read_eval_results, write_eval_results
from unip_hf.hub.upload import list_upload_files, missing_remote_code, push_to_hub

REMOTE_CODE = ("configuration_unip.py", "modeling_unip.py", "image_processing_unip.py")


def semantic_result():
    return BenchmarkResult(
        dataset_id="unip-hf/buffalo-udder",
        metrics={
            "mean_iou": np.float64(0.8125),
            "mean_accuracy": 0.875,
            "overall_accuracy": 0.9375,
            "per_category_iou": np.array([0.75, 0.875, np.nan]),
            "per_category_accuracy": np.array([1.0, 0.75, np.nan]),
        },
        dataset_name="Buffalo udder",
        dataset_split="validation",
        notes="whole-image inference",
    )


def irstd_result():
    return BenchmarkResult(
        dataset_id="unip-hf/sirst",
        metrics={"iou": 0.71, "niou": 0.69, "pd": 0.95, "fa": 12.5, "num_images": 86, "false_alarm_pixels": 30},
        dataset_name="SIRST",
        task="irstd",
    )


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_templates_are_package_data():
    assert template_path("model_card").is_file()
    assert template_path("dataset_card.md").is_file()
    with pytest.raises(FileNotFoundError):
        template_path("space_card")


def test_headline_metrics_drop_arrays_counts_and_nan():
    metrics = {"fa": 3.0, "num_targets": 5, "iou": np.float32(0.5), "per_category_iou": np.zeros(3), "niou": float("nan")}
    assert headline_metrics(metrics) == {"iou": 0.5, "fa": 3.0}


def test_model_card_metadata_and_model_index():
    card = make_model_card(
        "unip-tiny-udder",
        repo_id="someone/unip-tiny-udder",
        results=[semantic_result(), irstd_result()],
        datasets=["unip-hf/buffalo-udder"],
        base_model="someone/unip-tiny-infmix",
        labels=["background", "udder"],
        training={"learning_rate": 1e-4, "layer_decay": 0.85},
    )
    meta = front_matter(str(card))
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"infrared", "thermal", "unip"} <= set(meta["tags"])
    assert meta["datasets"] == ["unip-hf/buffalo-udder", "unip-hf/sirst"]
    assert meta["base_model"] == "someone/unip-tiny-infmix"
    assert meta["license"] == "apache-2.0"
    (index,) = meta["model-index"]
    assert index["name"] == "unip-tiny-udder"
    semantic, irstd = index["results"]
    assert semantic["task"] == {"type": "image-segmentation", "name": "Semantic Segmentation"}
    assert semantic["dataset"] == {"name": "Buffalo udder", "type": "unip-hf/buffalo-udder", "split": "validation"}
    assert [(m["type"], m["value"]) for m in semantic["metrics"]] == [
        ("mean_iou", 0.8125),
        ("mean_accuracy", 0.875),
        ("overall_accuracy", 0.9375),
    ]
    assert irstd["task"]["name"] == "Infrared Small Target Detection"
    assert {m["type"]: m["value"] for m in irstd["metrics"]} == {"iou": 0.71, "niou": 0.69, "pd": 0.95, "fa": 12.5}
    # huggingface_hub reads the card back into EvalResult objects.
    reloaded = ModelCard(str(card))
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in reloaded.data.eval_results}
    assert values[("unip-hf/buffalo-udder", "mean_iou")] == 0.8125
    assert values[("unip-hf/sirst", "fa")] == 12.5
    text = card.text
    assert 'AutoModelForSemanticSegmentation.from_pretrained("someone/unip-tiny-udder"' in text
    assert 'pipeline("image-segmentation", model="someone/unip-tiny-udder"' in text
    assert "| Buffalo udder | validation | mIoU (%) | 81.25 |" in text
    assert "| SIRST | test | Fa (x 1e-6) | 12.50 |" in text
    assert "| 1 | udder |" in text and "| layer_decay | 0.85 |" in text
    assert "Zhang, Tao and Wen, Jinyong and Chen, Zhen and Ding, Kun and Xiang, Shiming and Pan, Chunhong" in text
    assert "\n\n\n" not in text


def test_backbone_card_has_pretraining_section():
    summary = PretrainingSummary(
        teacher="facebook/vit-mae-large", teacher_layer=18, data="InfMix", steps=5000, final_loss=0.12345,
        student="unip-small", batch_size=256, extra={"learning_rate": 1.5e-4},
    )
    card = make_model_card("unip-small-infmix", repo_id="someone/unip-small-infmix", pretraining=summary)
    meta = front_matter(str(card))
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert {"infrared", "thermal", "unip"} <= set(meta["tags"])
    assert "model-index" not in meta and "model_name" not in meta
    text = card.text
    assert "## Pre-training" in text
    for row in ("| teacher | facebook/vit-mae-large |", "| teacher layer | 18 |", "| data | InfMix |", "| steps | 5000 |",
                "| final loss | 0.1235 |", "| learning_rate | 0.00015 |"):
        assert row in text, row
    assert 'AutoModel.from_pretrained("someone/unip-small-infmix"' in text
    assert "- InfMix" in text  # training data defaults to the pre-training data
    assert "No evaluation results recorded yet." in text


def test_write_and_read_eval_results(tmp_path):
    written = write_eval_results(tmp_path, [semantic_result(), irstd_result()])
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        ".eval_results/unip-hf--buffalo-udder-validation.yaml",
        ".eval_results/unip-hf--sirst-test.yaml",
        "eval_results.json",
    ]
    raw = yaml.safe_load(written[1].read_text())
    assert raw[0] == {"dataset": {"id": "unip-hf/sirst", "task_id": "iou"}, "value": 0.71, "notes": "IoU; split=test"}
    entries = parse_eval_result_entries(raw)
    assert [(e.task_id, e.value) for e in entries] == [("iou", 0.71), ("niou", 0.69), ("pd", 0.95), ("fa", 12.5)]
    semantic = parse_eval_result_entries(yaml.safe_load(written[0].read_text()))
    assert semantic[0].dataset_id == "unip-hf/buffalo-udder" and semantic[0].value == 0.8125
    assert semantic[0].notes == "mIoU; split=validation; whole-image inference"
    data = json.loads(written[2].read_text())  # strict JSON: NaN became null
    assert data["results"][0]["metrics"]["per_category_iou"] == [0.75, 0.875, None]
    back = read_eval_results(tmp_path)
    assert [r.dataset_id for r in back] == ["unip-hf/buffalo-udder", "unip-hf/sirst"]
    assert back[1].task == "irstd" and back[1].headline == irstd_result().headline
    assert read_eval_results(tmp_path / "missing") == []


def test_dataset_card():
    report_sources = [
        {"source": "sirst", "modality": "infrared", "kept": 427, "files": 430},
        {"name": "coco-gray", "modality": "rgb", "images": 1000, "license": "CC BY 4.0"},
    ]
    card = make_dataset_card(repo_id="someone/infmix", sources=report_sources)
    meta = front_matter(str(card))
    assert meta["pretty_name"] == "InfMix"
    assert {"infrared", "thermal", "unip"} <= set(meta["tags"])
    assert meta["size_categories"] == "1K<n<10K"
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    text = card.text
    assert "| sirst | infrared | 427 | see source |" in text
    assert "| **total** | | **1427** | |" in text
    assert 'load_dataset("someone/infmix", split="train")' in text
    assert isinstance(DatasetCard(str(card)).data.to_dict(), dict)


# ------------------------------------------------------------------------------------------- push
def fake_checkpoint(folder, with_remote_code=True):
    folder.mkdir(parents=True, exist_ok=True)
    auto_map = {
        "AutoConfig": "configuration_unip.UnipConfig",
        "AutoModel": "modeling_unip.UnipViTModel",
        "AutoModelForSemanticSegmentation": "modeling_unip.UnipForSemanticSegmentation",
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "unip", "auto_map": auto_map}))
    # transformers 5 image processors map a backend to the class
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"auto_map": {"AutoImageProcessor": {"pil": "image_processing_unip.UnipImageProcessor"}}})
    )
    (folder / "model.safetensors").write_bytes(b"weights")
    if with_remote_code:
        for name in REMOTE_CODE:
            (folder / name).write_text("# remote code\n")
    # training leftovers that must not be pushed
    (folder / "checkpoint-100").mkdir()
    (folder / "checkpoint-100" / "model.safetensors").write_bytes(b"old")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("log")
    (folder / "optimizer.bin").write_bytes(b"state")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_unip.cpython-311.pyc").write_bytes(b"pyc")
    return folder


@pytest.fixture
def patched_api(monkeypatch):
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        # What upload_folder would commit: the same filter huggingface_hub applies, run here on its own.
        from pathlib import Path

        root = Path(folder_path)
        files = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())
        ignore = list(kwargs.get("ignore_patterns") or []) + list(DEFAULT_IGNORE_PATTERNS)
        committed = sorted(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=ignore))
        calls["upload_folder"].append({"repo_id": repo_id, "files": committed, "folder": root, **kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_commits_exact_files_and_card(tmp_path, patched_api):
    folder = fake_checkpoint(tmp_path / "model")
    card = make_model_card("unip-tiny-sirst", repo_id="someone/unip-tiny-sirst", results=[irstd_result()])
    out = push_to_hub(folder, "someone/unip-tiny-sirst", card=card, results=[irstd_result()], private=True)
    assert out == "commit-info"
    assert patched_api["create_repo"] == [
        {"repo_id": "someone/unip-tiny-sirst", "repo_type": "model", "private": True, "exist_ok": True, "token": None}
    ]
    (upload,) = patched_api["upload_folder"]
    expected = [
        ".eval_results/unip-hf--sirst-test.yaml",
        "README.md",
        "config.json",
        "configuration_unip.py",
        "eval_results.json",
        "image_processing_unip.py",
        "model.safetensors",
        "modeling_unip.py",
        "preprocessor_config.json",
    ]
    assert upload["files"] == expected
    assert list_upload_files(folder) == expected
    assert upload["repo_type"] == "model" and upload["create_pr"] is False
    # The committed card: metadata and model-index values parsed back from README.md.
    pushed = ModelCard.load(folder / "README.md")
    assert pushed.data.library_name == "transformers"
    assert pushed.data.pipeline_tag == "image-segmentation"
    assert {"infrared", "thermal", "unip"} <= set(pushed.data.tags)
    assert pushed.data.datasets == ["unip-hf/sirst"]
    values = {r.metric_type: r.metric_value for r in pushed.data.eval_results}
    assert values == {"iou": 0.71, "niou": 0.69, "pd": 0.95, "fa": 12.5}
    entries = parse_eval_result_entries(yaml.safe_load((folder / expected[0]).read_text()))
    assert {e.task_id: e.value for e in entries} == values


def test_push_to_hub_refuses_missing_remote_code(tmp_path, patched_api):
    folder = fake_checkpoint(tmp_path / "model", with_remote_code=False)
    assert missing_remote_code(folder) == ["configuration_unip.py", "modeling_unip.py", "image_processing_unip.py"]
    with pytest.raises(FileNotFoundError, match="remote code"):
        push_to_hub(folder, "someone/broken")
    assert patched_api["create_repo"] == [] and patched_api["upload_folder"] == []


def test_push_dataset_folder(tmp_path, patched_api):
    folder = tmp_path / "infmix"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    push_to_hub(folder, "someone/infmix", card=make_dataset_card(repo_id="someone/infmix"), repo_type="dataset")
    (upload,) = patched_api["upload_folder"]
    assert upload["repo_type"] == "dataset"
    assert upload["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    assert patched_api["create_repo"][0]["repo_type"] == "dataset"


def test_push_saved_unip_model_carries_remote_code(tmp_path, patched_api):
    config = unip_hf.UnipConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=2,
        auxiliary_channels=16,
    )
    folder = tmp_path / "saved"
    unip_hf.UnipForSemanticSegmentation(config).save_pretrained(folder)
    unip_hf.UnipImageProcessor().save_pretrained(folder)
    assert missing_remote_code(folder) == []
    push_to_hub(folder, "someone/tiny", card=make_model_card("tiny", repo_id="someone/tiny"))
    files = patched_api["upload_folder"][0]["files"]
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_CODE):
        assert name in files, name


def test_card_template_variables_override_the_defaults(tmp_path):
    """Both cards render through one helper: the caller's template variables win over the defaults (citation
    included), and a custom template sees the built-in variables too."""
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ repo_id }} | {{ summary }} | {{ citation }} | {{ extra }}\n")
    model = make_model_card("m", repo_id="me/m", summary="S", template=template, citation="C", extra="E")
    dataset = make_dataset_card("d", summary="S", template=template, citation="C", extra="E")
    assert model.text.strip() == "me/m | S | C | E"
    assert dataset.text.strip() == "d | S | C | E"
    assert "@inproceedings" in make_dataset_card("d").text  # the UNIP citation by default
