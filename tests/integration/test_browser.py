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
from worker.stack import Stack

pytestmark = pytest.mark.docker

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Nothing but loopback: non-local requests go to a closed proxy port, and no name resolves.
LOOPBACK_ONLY = [
    "--proxy-server=http://127.0.0.1:9",
    # Each notebook's origin is a name under localhost, which Chromium keeps on loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost , "
    "EXCLUDE *.localhost",
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


def test_a_read_token_sees_jupyterlab_in_a_browser(notebooks: Notebooks, browser) -> None:
    nid, url = _open(notebooks, "jupyterlab", "seen-by-reader.txt")
    r = notebooks.api.post(
        f"/v1/projects/{notebooks.project}/tokens", json={"name": "viewer", "role": "read"}
    )
    assert r.status_code == 201, r.text
    browser.get(url.split("?")[0] + "?token=" + r.json()["token"])
    wait = WebDriverWait(browser, 90)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))
    # Read-only, yet the workspace is there to see.
    wait.until(_item_named(browser, ".jp-DirListing-item", "seen-by-reader.txt"))
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


# Run in a page of notebook A: fetch() each URL with the browser's credentials and say what
# came back ("read N bytes" or the error), the way a script in a notebook's page would try.
FETCH_ALL = """
const done = arguments[arguments.length - 1];
Promise.all(arguments[0].map(url =>
    fetch(url, {credentials: "include"})
        .then(r => r.text().then(t => "read " + t.length + " bytes, status " + r.status))
        .catch(e => "failed: " + e)
)).then(done);
"""


def test_a_notebooks_page_cannot_read_another_notebook_or_the_api(
    notebooks: Notebooks, browser, stack: Stack
) -> None:
    a, b = (notebooks.create(name=f"page-{n}")["id"] for n in "ab")
    url_a, url_b = (notebooks.wait(nid, "RUNNING", timeout=180)["status"]["url"] for nid in (a, b))
    origin_b = url_b.split("/lab")[0]
    wait = WebDriverWait(browser, 90)
    # The visitor has opened B (its cookie is in the browser), then A.
    browser.get(url_b)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))
    browser.get(url_a)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))
    assert browser.current_url.startswith(url_a.split("/lab")[0])
    targets = [
        origin_b + "/api/contents",
        origin_b + "/api/status",
        f"{stack.api_url}/v1/projects/{notebooks.project}/notebooks",
        f"{stack.api_url}/v1/projects/{notebooks.project}/notebooks/{b}",
    ]
    browser.set_script_timeout(30)
    results = browser.execute_async_script(FETCH_ALL, targets)
    assert all(r.startswith("failed") for r in results), dict(zip(targets, results, strict=True))
    # A's own API answers that same script: the failures are the origins, not the page.
    [own] = browser.execute_async_script(FETCH_ALL, [url_a.split("/lab")[0] + "/api/contents"])
    assert own.startswith("read") and own.endswith("status 200"), own
    # B still opens from its own link.
    browser.get(url_b)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))
    for nid in (a, b):
        notebooks.delete(nid)
    for nid in (a, b):
        notebooks.wait(nid, "DELETED")
