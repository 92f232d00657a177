"""`unip space create` / `unip space push` and the Space's `predict` called directly (no browser, no server)."""

import importlib.util
import json
import sys

import numpy as np
import pytest
from huggingface_hub import HfApi, SpaceCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

import unip_hf
from conftest import data_path
from unip_hf.cli import main as unip_main
from unip_hf.hub.cards import make_model_card
from unip_hf.evaluation.metrics.irstd.irstd import components
from unip_hf.deploy.space import GRADIO_VERSION, create_space, push_space


def _save_tiny(folder, labels=("background", "target"), **processor_kwargs):
    config = unip_hf.UnipConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_labels=len(labels), auxiliary_channels=16, decoder_hidden_size=32,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    unip_hf.UnipForSemanticSegmentation(config).save_pretrained(folder)
    unip_hf.UnipImageProcessor(**processor_kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "model", img_scale=(64, 64), size_divisor=8)


def _load_app(space):
    spec = importlib.util.spec_from_file_location(f"space_app_{abs(hash(str(space)))}", space / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sixteen_bit(path, low=30000, size=(40, 30)):
    """A 16-bit PNG whose values all lie above 255: an 8-bit conversion would flatten it."""
    rng = np.random.default_rng(0)
    values = (low + rng.integers(0, 2000, (size[1], size[0]))).astype(np.uint16)
    values[10:14, 20:24] = 65000  # a hot spot
    Image.fromarray(values).save(path)
    return path


def test_space_create_writes_files_metadata_and_examples(tmp_path, tiny_model):
    example = data_path("sirst", "images", "Misc_1.png")
    space = create_space(str(tiny_model), tmp_path / "space", title="Tiny SIRST", examples=[str(example)])
    names = sorted(p.name for p in space.iterdir())
    assert names == ["README.md", "app.py", "examples", "model", "requirements.txt", "space_config.json"]
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.sdk_version == GRADIO_VERSION
    assert card.data.app_file == "app.py" and card.data.title == "Tiny SIRST"
    assert card.data.license == "apache-2.0" and card.data.emoji and card.data.colorFrom and card.data.colorTo
    assert card.data.models is None  # a local model folder is copied, not referenced
    requirements = (space / "requirements.txt").read_text().split()
    assert f"gradio=={GRADIO_VERSION}" in requirements
    assert any(line.startswith("torch") for line in requirements)
    assert any(line.startswith("transformers") for line in requirements)
    assert not any(line.startswith("unip") for line in requirements)  # the copied model carries its remote code
    assert (space / "examples" / "Misc_1.png").read_bytes() == example.read_bytes()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_unip.py",
                 "configuration_unip.py", "image_processing_unip.py"):
        assert (space / "model" / name).is_file(), name
    settings = json.loads((space / "space_config.json").read_text())
    assert settings["model"] == "model" and settings["task"] == "irstd"
    assert settings["id2label"] == {"0": "background", "1": "target"}
    assert settings["examples"] == ["examples/Misc_1.png"]


def test_space_create_from_hub_id_references_the_model(tmp_path):
    space = create_space("someone/unip-tiny-sirst", tmp_path / "space")
    card = SpaceCard.load(space / "README.md")
    assert card.data.models == ["someone/unip-tiny-sirst"] and card.data.title == "unip-tiny-sirst"
    assert not (space / "model").exists()
    assert json.loads((space / "space_config.json").read_text())["model"] == "someone/unip-tiny-sirst"


def test_space_create_refuses_bad_arguments(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="MODEL_DIR_OR_HUB_ID 'no/such/folder'"):
        create_space("no/such/folder", tmp_path / "a")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "unip", "auto_map": {
        "AutoConfig": "configuration_unip.UnipConfig"}}))
    with pytest.raises(FileNotFoundError, match="remote code"):
        create_space(str(bare), tmp_path / "b")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        create_space(str(tiny_model), tmp_path / "c", examples=[str(broken)])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        create_space(str(tiny_model), tmp_path / "d", examples=[str(tmp_path / "missing.png")])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        create_space(str(tiny_model), full)


def test_app_predict_keeps_16_bits_and_reports_targets(tmp_path, tiny_model):
    space = create_space(str(tiny_model), tmp_path / "space")
    app = _load_app(space)
    image = _sixteen_bit(tmp_path / "hot16.png")
    model, processor = app.load()
    probs = app.probabilities(model, processor, app.read_image(str(image), processor))
    threshold = float(np.quantile(1 - probs[0], 0.8))  # an untrained model: a threshold that leaves some targets
    intensity, overlay, legend, shares, targets = app.predict(str(image), threshold)
    expected = processor.to_intensity(Image.open(image))
    assert Image.open(image).mode in ("I;16", "I")
    # the intensity the model sees keeps the 16-bit detail (an 8-bit RGB conversion would be one flat value)
    assert np.abs(np.asarray(intensity, dtype=np.float32) / 255 - expected).max() <= 0.5 / 255 + 1e-6
    assert np.asarray(intensity).std() > 10 and np.asarray(intensity)[11, 21] == 255
    assert overlay.size == (40, 30) and overlay.mode == "RGB"
    assert "background" in legend and "target" in legend
    assert [row[0] for row in shares] == ["background", "target"]
    assert sum(row[1] for row in shares) == 40 * 30 and abs(sum(row[2] for row in shares) - 100) < 0.05
    # the target list is the 8-connected components of the thresholded foreground, as the IRSTD metric counts them
    mask = 1 - probs[0] > threshold
    areas, centroids = components(mask)
    assert len(targets) == len(areas) > 0
    assert [row[3] for row in targets] == areas.tolist()
    assert np.allclose([[row[2], row[1]] for row in targets], centroids, atol=0.05)
    assert all(threshold - 1e-3 <= row[4] <= 1 for row in targets)  # peak score, rounded to 3 places
    assert shares[1][1] == int(mask.sum())
    # the threshold slider moves the decision: a higher threshold never marks more pixels
    low = app.predict(str(image), 0.05)[3][1][1]
    high = app.predict(str(image), 0.95)[3][1][1]
    assert low >= shares[1][1] >= high


def test_app_predict_keeps_16_bit_tiff(tmp_path, tiny_model):
    space = create_space(str(tiny_model), tmp_path / "space")
    app = _load_app(space)
    png = _sixteen_bit(tmp_path / "hot16.png")
    tiff = tmp_path / "hot16.tif"
    Image.open(png).save(tiff)
    from_png, from_tiff = app.predict(str(png), 0.5), app.predict(str(tiff), 0.5)
    assert np.array_equal(np.asarray(from_png[0]), np.asarray(from_tiff[0]))
    assert np.asarray(from_tiff[0]).std() > 10 and from_png[3] == from_tiff[3]


@pytest.mark.parametrize("mode", ["RGB", "P", "L"])
def test_app_predict_accepts_8_bit_colour_and_palette(tmp_path, tiny_model, mode):
    space = create_space(str(tiny_model), tmp_path / "space")
    app = _load_app(space)
    source = Image.open(data_path("sirst", "images", "Misc_1.png")).convert("RGB")
    path = tmp_path / f"input_{mode}.png"
    (source.convert(mode) if mode != "P" else source.quantize(64)).save(path)
    intensity, overlay, _, shares, _ = app.predict(str(path), 0.5)
    assert overlay.size == source.size == intensity.size
    assert sum(row[1] for row in shares) == source.size[0] * source.size[1]


def test_app_semantic_model_has_no_target_list(tmp_path):
    model = _save_tiny(tmp_path / "model3", labels=("background", "road", "person"))
    space = create_space(str(model), tmp_path / "space", task="auto")
    assert json.loads((space / "space_config.json").read_text())["task"] == "semantic"
    app = _load_app(space)
    _, overlay, legend, shares, targets = app.predict(str(_sixteen_bit(tmp_path / "x.png")), 0.5)
    assert targets == [] and [row[0] for row in shares] == ["background", "road", "person"]
    assert all(name in legend for name in ("background", "road", "person"))


REMOTE_RUN = """
import json, sys
sys.modules["unip_hf"] = None  # `import unip_hf` fails, as on a Space without the package
import importlib.util
spec = importlib.util.spec_from_file_location("app", sys.argv[1] + "/app.py")
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
intensity, overlay, legend, shares, targets = app.predict(sys.argv[2], 0.5)
print(json.dumps({"remote": app._LOADED["remote"], "module": type(app._LOADED["model"]).__module__,
                  "loaded": sorted(n for n, m in sys.modules.items() if n.startswith("unip_hf") and m is not None),
                  "shares": shares, "size": list(overlay.size)}))
"""


def test_app_loads_through_remote_code_without_the_package(tmp_path, tiny_model):
    import subprocess

    space = create_space(str(tiny_model), tmp_path / "space")
    image = str(_sixteen_bit(tmp_path / "hot16.png"))
    with_package = _load_app(space).predict(image, 0.5)
    # a fresh interpreter: in this one the UNIP classes are already registered with the Auto classes
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", REMOTE_RUN, str(space), image], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    without = json.loads(result.stdout.strip().splitlines()[-1])
    assert without["remote"] is True and without["module"].startswith("transformers_modules")
    assert without["loaded"] == []
    assert without["size"] == [40, 30]
    assert without["shares"] == with_package[3]


@pytest.fixture
def patched_api(monkeypatch):
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from pathlib import Path

        root = Path(folder_path)
        files = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())
        committed = sorted(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                               ignore_patterns=kwargs.get("ignore_patterns")))
        calls["upload_folder"].append({"repo_id": repo_id, "files": committed, **kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_space_push_creates_a_gradio_space_and_uploads_the_folder(tmp_path, tiny_model, patched_api):
    example = data_path("sirst", "images", "Misc_1.png")
    space = create_space(str(tiny_model), tmp_path / "space", examples=[str(example)])
    (space / "__pycache__").mkdir()
    (space / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert unip_main(["space", "push", str(space), "someone/unip-tiny-demo"]) == 0
    (create,) = patched_api["create_repo"]
    assert create["repo_id"] == "someone/unip-tiny-demo" and create["repo_type"] == "space"
    assert create["space_sdk"] == "gradio" and create["exist_ok"] is True
    (upload,) = patched_api["upload_folder"]
    assert upload["repo_type"] == "space"
    assert upload["files"] == [
        "README.md", "app.py", "examples/Misc_1.png", "model/config.json", "model/configuration_unip.py",
        "model/image_processing_unip.py", "model/infrared_decoding.py", "model/losses.py", "model/model.safetensors", "model/modeling_unip.py",
        "model/modeling_unip_segmentation.py", "model/modeling_unip_small_target.py",
        "model/preprocessor_config.json", "requirements.txt", "space_config.json",
    ]
    with pytest.raises(FileNotFoundError, match="unip space create"):
        push_space(tmp_path, "someone/x")
    with pytest.raises(ValueError, match="user/space-name"):
        push_space(space, "not-an-id")
    assert len(patched_api["create_repo"]) == 1


def test_space_cli_create(tmp_path, tiny_model, capsys):
    example = data_path("sirst", "images", "Misc_1.png")
    out = tmp_path / "cli_space"
    assert unip_main(["space", "create", str(tiny_model), str(out), "--title", "CLI demo", "--examples",
                      str(example)]) == 0
    assert SpaceCard.load(out / "README.md").data.title == "CLI demo"
    assert (out / "examples" / "Misc_1.png").is_file()
    assert "unip space push" in capsys.readouterr().out


def test_model_card_links_the_space():
    card = make_model_card("unip-tiny-sirst", repo_id="someone/unip-tiny-sirst", space_id="someone/unip-demo")
    assert "https://huggingface.co/spaces/someone/unip-demo" in card.content
    plain = make_model_card("unip-tiny-sirst", repo_id="someone/unip-tiny-sirst")
    assert "huggingface.co/spaces" not in plain.content


def _bytes_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_space_create_refuses_an_out_dir_that_is_holds_or_lies_in_the_model(tmp_path, capsys):
    """Issue 24 item 2: `unip space create SPACE/model SPACE --overwrite` deleted the source model (it removes
    OUT/model) and `unip space create SEM SEM --overwrite` replaced the model card by the Space README. An OUT_DIR
    that is, holds or lies inside the model folder is refused (exit 2, one line), with or without --overwrite, and
    the model is untouched."""
    space = tmp_path / "space"
    model = _save_tiny(space / "model", img_scale=(64, 64), size_divisor=8)
    (model / "README.md").write_text("# the model card\n")
    before = _bytes_of(model)
    for out in (space, model, model / "demo"):
        for extra in ([], ["--overwrite"]):
            with pytest.raises(SystemExit) as caught:
                unip_main(["space", "create", str(model), str(out), *extra])
            assert caught.value.code == 2
            err = capsys.readouterr().err
            assert "the model folder" in err and "outside the model folder" in err and "Traceback" not in err
            assert _bytes_of(model) == before
    assert not (model / "demo").exists() and not (space / "app.py").exists()


def test_space_create_overwrite_keeps_its_own_examples(tmp_path, tiny_model):
    """`--overwrite` with an example that already lies in OUT_DIR/examples (copying a file onto itself raised)."""
    example = data_path("sirst", "images", "Misc_1.png")
    space = create_space(str(tiny_model), tmp_path / "space", examples=[str(example)])
    again = create_space(str(tiny_model), space, examples=[str(space / "examples" / "Misc_1.png")], overwrite=True)
    assert json.loads((again / "space_config.json").read_text())["examples"] == ["examples/Misc_1.png"]
    assert (space / "examples" / "Misc_1.png").read_bytes() == example.read_bytes()


def test_app_refuses_a_huge_image_from_its_header_and_answers_errors_readably(tmp_path, tiny_model):
    """Issue 24 item 16: a 61 KB PNG of 9000x7000 zeros held the small-target Space for more than 8 minutes at 3.1 GB.
    The app now refuses an image above its pixel limit (`space_config.json` `max_pixels`, default 2 megapixels) from
    the header, before decoding a pixel, and every error reaches the user as a message naming the file (`answer`
    raises `gr.Error`, not gradio's bare "Error")."""
    gr = pytest.importorskip("gradio", reason="the Space app needs the [space] extra (gradio)")
    space = create_space(str(tiny_model), tmp_path / "space")
    assert json.loads((space / "space_config.json").read_text())["max_pixels"] == 2_000_000
    app = _load_app(space)
    bomb = tmp_path / "zeros.png"
    Image.new("L", (9000, 7000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(gr.Error, match=r"zeros.png: 9000x7000 pixels \(63.0 megapixels\) is more than this Space "
                                       r"processes \(2 megapixels\)"):
        app.answer(str(bomb), 0.5)
    with pytest.raises(ValueError, match="9000x7000"):
        app.check_size(str(bomb))  # the header alone decides
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(gr.Error, match="broken.png: not an image this Space can read"):
        app.answer(str(broken), 0.5)
    onebit = tmp_path / "mask.png"
    Image.new("1", (40, 30)).save(onebit)
    with pytest.raises(gr.Error, match="1-bit image looks like a mask"):
        app.answer(str(onebit), 0.5)
    # an image within the limit still works, and a Space written with a smaller limit refuses it
    image = _sixteen_bit(tmp_path / "hot16.png")
    assert app.answer(str(image), 0.5)[1].size == (40, 30)
    small = _load_app(create_space(str(tiny_model), tmp_path / "small", max_megapixels=0.001))
    with pytest.raises(gr.Error, match="40x30 pixels .* more than this Space processes \\(0.001 megapixels\\)"):
        small.answer(str(image), 0.5)


def test_space_create_refuses_a_backbone_without_a_segmentation_head(tmp_path, capsys):
    """Issue 24 item 11's pattern next door: a Space for a backbone-only folder (UnipViTModel) would show a random
    head's predictions; it is refused, naming the backbone."""
    config = unip_hf.UnipConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2)
    unip_hf.UnipViTModel(config).save_pretrained(tmp_path / "backbone")
    unip_hf.UnipImageProcessor().save_pretrained(tmp_path / "backbone")
    with pytest.raises(SystemExit) as caught:
        unip_main(["space", "create", str(tmp_path / "backbone"), str(tmp_path / "space")])
    assert caught.value.code == 2 and "without a segmentation head" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()
