"""Headless Chromium opens both editors through the gateway, as a person would from the
notebook's URL, and the screenshots show the editor (not an error page or a blank one)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.conftest import REQUIRE_DOCKER, Notebooks

pytestmark = pytest.mark.docker

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Nothing but loopback: non-local requests go to a closed proxy port, and no name resolves.
LOOPBACK_ONLY = [
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        problem = "headless Chromium is missing: apt-get install chromium chromium-driver"
        if REQUIRE_DOCKER:
            pytest.fail(problem)
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", *LOOPBACK_ONLY]:  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _looks_like_an_editor(png: bytes, path: Path) -> None:
    """A rendered UI: the full window, many colours, no single colour over nearly all of it
    (an error page or a blank one is mostly one colour with a little text)."""
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 1200 and image.height >= 600, image.size
    small = image.resize((320, 200))
    colours = small.getcolors(maxcolors=320 * 200)
    assert colours is not None and len(colours) > 40, f"{path}: {len(colours or [])} colours"
    top = max(count for count, _ in colours)
    assert top < 0.9 * 320 * 200, f"{path}: one colour covers {top / (320 * 200):.0%}"


def _open(notebooks: Notebooks, editor: str, marker: str) -> tuple[str, object]:
    nid = notebooks.create(name=f"see-{editor}", editor=editor)["id"]
    nb = notebooks.wait(nid, "RUNNING", timeout=180)
    [container] = notebooks.containers(nid)
    code, out = container.exec_run(["sh", "-c", f"echo hello > /workspace/{marker}"])
    assert code == 0, out
    return nid, nb["status"]["url"]


def _item_named(driver, selector: str, name: str):
    def found(d):
        return any(name in e.text for e in d.find_elements(By.CSS_SELECTOR, selector))

    return found


def test_jupyterlab_in_a_browser(notebooks: Notebooks, browser, tmp_path) -> None:
    nid, url = _open(notebooks, "jupyterlab", "seen-in-lab.txt")
    browser.get(url)
    wait = WebDriverWait(browser, 90)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))
    # The file browser lists the workspace: the editor's API answers through the gateway.
    wait.until(_item_named(browser, ".jp-DirListing-item", "seen-in-lab.txt"))
    assert browser.title.startswith("JupyterLab")
    assert browser.current_url.startswith(url.split("?")[0].removesuffix("lab"))
    _looks_like_an_editor(browser.get_screenshot_as_png(), tmp_path / "jupyterlab.png")
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def test_vscode_in_a_browser(notebooks: Notebooks, browser, tmp_path) -> None:
    nid, url = _open(notebooks, "vscode", "seen-in-code.txt")
    browser.get(url)
    wait = WebDriverWait(browser, 90)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".monaco-workbench")))
    # The explorer lists the workspace: VS Code's server answers over the gateway's WebSocket.
    wait.until(_item_named(browser, ".explorer-item", "seen-in-code.txt"))
    assert "code-server" in browser.title
    assert not browser.find_elements(By.CSS_SELECTOR, ".monaco-dialog-box")  # no "reconnect"
    _looks_like_an_editor(browser.get_screenshot_as_png(), tmp_path / "vscode.png")
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")
