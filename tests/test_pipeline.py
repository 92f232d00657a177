"""pipeline("image-segmentation") with a saved UNIP checkpoint: 8-bit and 16-bit inputs, one mask per label present.

The stock pipeline decodes inputs with `image.convert("RGB")`, which clips 16-bit data; UnipImageSegmentationPipeline
(`pipeline_class=` or the `"infrared-image-segmentation"` task) keeps the depth. Both are tested.
"""

import builtins

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY, ImageSegmentationPipeline

from unip_hf import UnipConfig, UnipForSemanticSegmentation, UnipImageProcessor, UnipImageSegmentationPipeline

ID2LABEL = {0: "background", 1: "person", 2: "vehicle"}
HEIGHT, WIDTH = 40, 52


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = UnipConfig.from_preset(
        "tiny",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_labels=3,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
        decoder_hidden_size=32,
        auxiliary_channels=16,
    )
    torch.manual_seed(0)
    model = UnipForSemanticSegmentation(config).eval()
    with torch.no_grad():  # make the prediction depend on the input so that several labels show up
        model.decode_head.classifier.weight.mul_(20.0)
    directory = tmp_path_factory.mktemp("unip_seg")
    model.save_pretrained(directory)
    UnipImageProcessor.from_model_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference(checkpoint):
    model = UnipForSemanticSegmentation.from_pretrained(checkpoint).eval()
    processor = UnipImageProcessor.from_pretrained(checkpoint)

    def predict(image, height=HEIGHT, width=WIDTH):
        with torch.no_grad():
            outputs = model(**processor(image, return_tensors="pt"))
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0].numpy()

    return processor, predict


@pytest.fixture
def l_image():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    array[:, : WIDTH // 2] //= 4
    return Image.fromarray(array)


@pytest.fixture
def raw16():
    """14-bit-like thermal counts far above 255, a warm blob on a cooler background."""
    rng = np.random.default_rng(1)
    raw = rng.integers(7000, 7400, (HEIGHT, WIDTH)).astype(np.uint16)
    raw[10:30, 15:40] += 1500
    return raw


def check_annotations(annotations, expected_map):
    """One mask per label present, each the size of the input, binary, and equal to the reference prediction."""
    present = np.unique(expected_map)
    assert len(present) >= 2, "the reference prediction should contain several labels"
    assert sorted(a["label"] for a in annotations) == sorted(ID2LABEL[int(i)] for i in present)
    coverage = np.zeros(expected_map.shape, dtype=int)
    for annotation in annotations:
        mask = annotation["mask"]
        assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (WIDTH, HEIGHT)
        array = np.asarray(mask)
        assert set(np.unique(array)) <= {0, 255}
        label_id = {v: k for k, v in ID2LABEL.items()}[annotation["label"]]
        np.testing.assert_array_equal(array == 255, expected_map == label_id)
        coverage += array == 255
    assert (coverage == 1).all()


def test_stock_pipeline_l_image(checkpoint, reference, l_image):
    _, predict = reference
    segmenter = pipeline("image-segmentation", model=str(checkpoint))
    assert type(segmenter) is ImageSegmentationPipeline
    assert isinstance(segmenter.image_processor, UnipImageProcessor)
    check_annotations(segmenter(l_image), predict(l_image))


def test_stock_pipeline_16bit_works_but_clips(checkpoint, reference, raw16, tmp_path):
    processor, predict = reference
    segmenter = pipeline("image-segmentation", model=str(checkpoint))
    image16 = Image.fromarray(raw16)
    assert image16.mode == "I;16"
    path = tmp_path / "frame16.png"
    image16.save(path)
    # the stock loader converts to RGB, clipping every 16-bit value above 255: the model sees what an 8-bit image of
    # the clipped values would give (documented limitation; use UnipImageSegmentationPipeline for 16-bit data)
    clipped = Image.fromarray(np.minimum(raw16, 255).astype(np.uint8))
    for source in (image16, str(path)):
        expected = processor(clipped, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(segmenter.preprocess(source)["pixel_values"].numpy(), expected)
        check_annotations(segmenter(source), predict(clipped))


@pytest.mark.parametrize("how", ["pipeline_class", "task"])
def test_unip_pipeline_keeps_16_bits(checkpoint, reference, raw16, l_image, tmp_path, how):
    processor, predict = reference
    if how == "pipeline_class":
        segmenter = pipeline(
            "image-segmentation", model=str(checkpoint), pipeline_class=UnipImageSegmentationPipeline
        )
    else:
        segmenter = pipeline("infrared-image-segmentation", model=str(checkpoint))
    assert type(segmenter) is UnipImageSegmentationPipeline
    path = tmp_path / "frame16.png"
    Image.fromarray(raw16).save(path)
    expected_pixels = processor(raw16, return_tensors="np")["pixel_values"]
    expected_map = predict(raw16)
    for source in (Image.fromarray(raw16), str(path), raw16, torch.from_numpy(raw16.astype(np.int32)).to(torch.uint16)):
        np.testing.assert_array_equal(segmenter.preprocess(source)["pixel_values"].numpy(), expected_pixels)
        check_annotations(segmenter(source), expected_map)
    # 8-bit images give the same result as through the stock pipeline
    check_annotations(segmenter(l_image), predict(l_image))
    # batches: one list of annotations per image
    batch = segmenter([l_image, str(path)])
    assert len(batch) == 2
    check_annotations(batch[1], expected_map)


def test_channels_first_tensor_size(checkpoint, reference):
    _, predict = reference
    segmenter = pipeline("image-segmentation", model=str(checkpoint), pipeline_class=UnipImageSegmentationPipeline)
    tensor = torch.rand(3, HEIGHT, WIDTH)
    check_annotations(segmenter(tensor), predict(tensor))


def test_stock_task_left_untouched():
    stock = PIPELINE_REGISTRY.supported_tasks["image-segmentation"]["impl"]
    assert stock in (ImageSegmentationPipeline, "transformers.pipelines.image_segmentation.ImageSegmentationPipeline")
    assert PIPELINE_REGISTRY.supported_tasks["infrared-image-segmentation"]["impl"] is UnipImageSegmentationPipeline


def test_pipeline_never_asks_to_trust_remote_code(checkpoint, monkeypatch):
    prompts = []

    def record(*args, **kwargs):
        prompts.append(args)
        return "n"

    monkeypatch.setattr(builtins, "input", record)
    pipeline("image-segmentation", model=str(checkpoint))
    pipeline("infrared-image-segmentation", model=str(checkpoint))
    assert prompts == []
