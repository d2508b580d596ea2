"""The demo page in a real browser: headless Chromium (Debian's) driven by Selenium, against
the real service on loopback with the shipped model.

Chromium and its driver come from Debian (`make test-tools` installs them as root); where
they are missing these tests skip and say so.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import DEFAULT_EMOTION_MODEL
from tests.conftest import ASTRONAUT, DEFAULT_LABELS, REPO
from tools.loopback import serving

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT = REPO / "docs" / "demo-page.png"
WAIT_S = 30
UPLOAD_LIMIT_BYTES = 1_500_000  # above the fixture photo (0.8 MB), below the noise picture


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (as root: make test-tools)")
    return browser, driver


@pytest.fixture(scope="module")
def server():
    with serving(
        {
            "PFVIT_PROVIDERS": "cpu",
            "PFVIT_INTRA_OP_THREADS": "1",
            "PFVIT_WARMUP_RUNS": "1",
            "PFVIT_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT_BYTES),
        }
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, server: str, width: int = 1280, height: int = 1000) -> None:
    browser.set_window_size(width, height)
    browser.get(server + "/")
    # Read in the page: the model card is rebuilt when /v1/models answers, so a held element goes stale.
    status = "const s = document.getElementById('model-status'); return s ? s.textContent : '';"
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(status) == "ready")


def wait_for_faces(browser) -> None:
    def loaded(d) -> bool:
        return bool(
            d.execute_script(
                "const i = document.querySelector('img.poker-face'); return !!(i && i.complete && i.naturalWidth > 0);"
            )
        )

    WebDriverWait(browser, WAIT_S).until(loaded)


def test_upload_shows_box_label_poker_face_and_expression_map(browser, server):
    open_page(browser, server)
    card = browser.find_element(By.ID, "model-card").text
    assert DEFAULT_EMOTION_MODEL in card and "CPUExecutionProvider" in card and "happiness" in card

    browser.find_element(By.ID, "photos").send_keys(str(ASTRONAUT))
    browser.find_element(By.ID, "analyse").click()
    wait_for_faces(browser)

    boxes = browser.find_elements(By.CSS_SELECTOR, ".photo-frame .face-box")
    assert len(boxes) == 1
    # The box sits where the detector put it: the fixture face is at x 181-268, y 62-172 of 512 px.
    style = {
        k: float(browser.execute_script(f"return parseFloat(arguments[0].style.{k})", boxes[0]))
        for k in ("left", "top", "width", "height")
    }
    assert abs(style["left"] - 100 * 181.1 / 512) < 1.0 and abs(style["top"] - 100 * 62.2 / 512) < 1.0
    assert abs(style["width"] - 100 * (267.7 - 181.1) / 512) < 1.0
    label = boxes[0].find_element(By.CSS_SELECTOR, ".face-label").text
    assert label == "1 happiness"  # the shipped model's reading of the fixture
    bars = browser.find_elements(By.CSS_SELECTOR, ".face .probabilities li")
    assert (
        len(bars) == len(DEFAULT_LABELS)
        and "happiness" in browser.find_element(By.CSS_SELECTOR, ".face .probabilities li.top").text
    )
    for selector in ("img.aligned-face", "img.poker-face", "img.expression-map"):
        img = browser.find_element(By.CSS_SELECTOR, selector)
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 48  # the model's input size
    assert "detect" in browser.execute_script("return document.querySelector('.timings').textContent")
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    browser.set_window_size(1280, 1320)  # the whole first result, for the README
    browser.save_screenshot(str(SCREENSHOT))
    shot = np.asarray(Image.open(SCREENSHOT).convert("RGB"))
    assert shot.shape[1] == 1280 and shot.std() > 20  # a picture, not a blank page


def test_phone_viewport_has_no_sideways_scroll(browser, server):
    open_page(browser, server, width=390, height=844)
    browser.find_element(By.ID, "photos").send_keys(str(ASTRONAUT))
    browser.find_element(By.ID, "analyse").click()
    wait_for_faces(browser)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    photo_width = browser.execute_script("return document.querySelector('img.photo').getBoundingClientRect().width")
    assert photo_width <= 390


def test_keyboard_alone(browser, server):
    open_page(browser, server)
    keys = ActionChains(browser)
    order = []
    for _ in range(5):
        keys.send_keys(Keys.TAB).perform()
        el = browser.switch_to.active_element
        order.append(el.get_attribute("id") or el.get_attribute("class"))
    assert order[:4] == ["skip", "photos", "analyse", "camera-open"], order
    # Analyse with nothing chosen, by keyboard: a readable message, focus back on the picker.
    analyse = browser.find_element(By.ID, "analyse")
    browser.execute_script("arguments[0].focus()", analyse)
    keys.send_keys(Keys.ENTER).perform()
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed())
    assert "No photo chosen" in error.text
    assert browser.switch_to.active_element.get_attribute("id") == "photos"
    # Choose the photo (the file dialog is the browser's own), then submit with Enter: results get the focus.
    browser.find_element(By.ID, "photos").send_keys(str(ASTRONAUT))
    browser.execute_script("arguments[0].focus()", analyse)
    keys.send_keys(Keys.ENTER).perform()
    wait_for_faces(browser)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.switch_to.active_element.get_attribute("id") == "results-heading")


def write_png(path: Path, image: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def submit_and_read_error(browser, path: Path) -> str:
    browser.find_element(By.ID, "photos").send_keys(str(path))
    browser.find_element(By.ID, "analyse").click()
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed())
    return error.text


def test_errors_are_readable(browser, server, tmp_path):
    open_page(browser, server)
    gif = tmp_path / "moving.gif"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(gif, format="GIF")
    text = submit_and_read_error(browser, gif)
    assert (
        "moving.gif: That file is not an image format the service reads" in text
        and "image format GIF is not accepted" in text
    )
    assert "image 0 (" not in text  # the service's position prefix, meaningless for one photo

    open_page(browser, server)
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)  # 2.4 MB as PNG
    text = submit_and_read_error(browser, write_png(tmp_path / "huge.png", noise))
    assert "huge.png: That file is too large for the service" in text and str(UPLOAD_LIMIT_BYTES) in text

    # Models still loading: the service answers 503 only in its first seconds, so the page is
    # given that answer (the same problem document the service sends) in place of the network.
    open_page(browser, server)
    browser.execute_script(
        """
        window.fetch = async () => new Response(
          JSON.stringify({type: "https://pfvit.dev/problems/not-ready", title: "Models are not loaded yet", status: 503,
                          detail: "models are still loading and warming up; retry shortly"}),
          {status: 503, headers: {"Content-Type": "application/problem+json", "Retry-After": "5"}});
        """
    )
    text = submit_and_read_error(browser, ASTRONAUT)
    assert "still loading its models" in text and "retry after 5 s" in text and "warming up" in text
