"""The Space's app in a real browser: `unip space create` with a tiny model, `python app.py` on 127.0.0.1, headless
Chromium (Debian's, driven by Playwright) uploads a real SIRST image and reads the overlay and the legend back."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import data_path

CHROMIUM = os.environ.get("UNIP_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "space_screenshot.png"


def _requirements():
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[space]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set UNIP_CHROMIUM)")
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_served(url: str, process: subprocess.Popen, log: Path, limit: float = 240.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not serve {url}:\n{log.read_text(errors='replace')[-3000:]}")


def _tiny_model(folder: Path) -> None:
    import unip_hf

    config = unip_hf.UnipConfig(
        image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=2,
        auxiliary_channels=16, decoder_hidden_size=32, id2label={0: "background", 1: "target"},
        label2id={"background": 0, "target": 1},
    )
    unip_hf.UnipForSemanticSegmentation(config).save_pretrained(folder)
    unip_hf.UnipImageProcessor(img_scale=(256, 256), size_divisor=8).save_pretrained(folder)


def test_space_app_in_headless_chromium(tmp_path):
    sync_api = _requirements()
    image_path = data_path("sirst", "images", "Misc_1.png")
    from unip_hf.deploy.space import create_space

    _tiny_model(tmp_path / "model")
    space = create_space(str(tmp_path / "model"), tmp_path / "space", title="UNIP tiny SIRST",
                         examples=[str(image_path)])
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "app.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_served(url, process, log)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.locator("#unip-upload input[type=file]").set_input_files(str(image_path))
                page.locator("#unip-run").click()
                overlay = page.locator("#unip-overlay img")
                overlay.wait_for(state="visible", timeout=120_000)
                page.wait_for_function(
                    "() => { const i = document.querySelector('#unip-overlay img'); return i && i.complete && "
                    "i.naturalWidth > 0; }", timeout=120_000)
                legend = page.locator("#unip-legend")
                legend.wait_for(state="visible", timeout=60_000)
                size = overlay.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                legend_text = legend.inner_text()
                page.wait_for_timeout(500)
                page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
                page.screenshot(path=str(tmp_path / "space_small.png"), full_page=False,
                                clip={"x": 0, "y": 0, "width": 1280, "height": 720})
            finally:
                browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert list(size) == list(Image.open(image_path).size)
    assert "background" in legend_text and "target" in legend_text
    assert (tmp_path / "space.png").stat().st_size > 0
    # The README's screenshot: a small copy, written when absent (or with UNIP_UPDATE_SCREENSHOT=1) so that test runs
    # do not keep rewriting a tracked file.
    small = Image.open(tmp_path / "space_small.png").convert("RGB")
    small.thumbnail((960, 540))
    small = small.quantize(colors=128)
    small.save(tmp_path / "space_readme.png", optimize=True)
    refresh = not SCREENSHOT.exists() or os.environ.get("UNIP_UPDATE_SCREENSHOT") == "1"
    if refresh and (tmp_path / "space_readme.png").stat().st_size < 150_000:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "space_readme.png", SCREENSHOT)
