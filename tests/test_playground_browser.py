"""The playgrounds in a real browser: the launch serves, headless Chromium (Selenium) drives
the pages with key presses, clicks, drags and slider keys, and the numbers are read back
from the pages. Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); without them the module is skipped with one line naming the install command."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install -y chromium chromium-driver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(f"headless Chromium not found; install it with: {INSTALL}", allow_module_level=True)
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium missing: pip install -e '.[test]'"
)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

START_TIMEOUT = 600  # loading and compiling on a busy 2-core CI machine
WAIT = 90  # for 200 CA steps


@pytest.fixture(scope="module")
def server_url():
    """``python -m experiments.playground --port=0`` until the module ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.playground", "--port=0", "--max_sessions=4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    deadline, seen, url = time.monotonic() + START_TIMEOUT, [], None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("playground: http://"):
            url = line.split()[1]
    if url is None:
        proc.kill()
        pytest.fail("the playground did not start:\n" + "".join(seen[-30:]))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def step(driver) -> int:
    return int(text(driver, "step-count") or 0)


def set_speed(driver, value: int) -> None:
    """The speed slider, moved with the keyboard (a real input event)."""
    slider = driver.find_element(By.ID, "speed")
    slider.send_keys(Keys.HOME)
    for _ in range(value - 1):
        slider.send_keys(Keys.ARROW_RIGHT)


def drag(driver, canvas, cells: int, points: list[tuple[float, float]]) -> None:
    """Press, move through ``points`` (grid cells, row and column) and release."""
    size = canvas.size["width"] / cells
    chain = ActionChains(driver)
    for i, (r, c) in enumerate(points):
        x, y = (
            (c + 0.5) * size - canvas.size["width"] / 2,
            (r + 0.5) * size - canvas.size["height"] / 2,
        )
        chain.move_to_element_with_offset(canvas, int(x), int(y))
        if i == 0:
            chain.click_and_hold()
    chain.release().perform()


def click_cells(driver, canvas, cells: int, points) -> None:
    """One click on each of ``points`` (row, column)."""
    size = canvas.size["width"] / cells
    chain = ActionChains(driver)
    for r, c in points:
        x, y = (
            (c + 0.5) * size - canvas.size["width"] / 2,
            (r + 0.5) * size - canvas.size["height"] / 2,
        )
        chain.move_to_element_with_offset(canvas, int(x), int(y)).click()
    chain.perform()


def living_cells(driver, cells: int) -> list[tuple[int, int]]:
    """The cells the page draws in colour (living), read from the canvas pixels."""
    return driver.execute_script(
        """
        const canvas = document.getElementById("board"), n = arguments[0];
        const s = canvas.width / n, px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
        const out = [];
        for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
          const i = (Math.floor((r + 0.5) * s) * canvas.width + Math.floor((c + 0.5) * s)) * 4;
          if (px.data[i] < 250 || px.data[i + 1] < 250 || px.data[i + 2] < 250) out.push([r, c]);
        }
        return out;
        """,
        cells,
    )


def js_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_mnist_page_digit_then_adversaries(server_url, browser, tmp_path_factory):
    shots = tmp_path_factory.mktemp("playground_screenshots")
    browser.get(server_url + "mnist")
    wait_for(lambda: browser.execute_script("return window.ncaStats.frames") > 0, "first frame")
    set_speed(browser, 4)
    canvas = browser.find_element(By.ID, "board")
    drag(browser, canvas, 28, [(14, c) for c in range(6, 22, 3)])  # draw a stroke
    wait_for(lambda: len(living_cells(browser, 28)) > 30, "the drawn stroke")
    ActionChains(browser).send_keys("3").perform()  # key 3: a test digit 3
    wait_for(lambda: text(browser, "loaded") == "a test 3", "digit 3 loaded")
    wait_for(lambda: step(browser) >= 200, "200 steps")
    assert text(browser, "majority") == "3"
    browser.save_screenshot(str(shots / "mnist_3.png"))

    browser.find_element(By.ID, "tool-adversary").click()
    digit = living_cells(browser, 28)
    assert len(digit) > 50
    click_cells(browser, canvas, 28, digit[::7])  # about 14 %, one adversarial cell at a time
    count = wait_for(lambda: int(text(browser, "adv-count")), "adversaries on the grid")
    assert count >= 7
    start = step(browser)
    wait_for(lambda: step(browser) >= start + 200, "200 steps with adversaries")
    assert text(browser, "majority") == "8"
    browser.save_screenshot(str(shots / "mnist_3_hijacked.png"))
    latencies = browser.execute_script("return window.ncaStats.latencies")
    assert latencies, "no click was measured"
    assert not js_errors(browser)


def test_lizard_page_tail_perturbation(server_url, browser, tmp_path_factory):
    shots = tmp_path_factory.mktemp("playground_screenshots")
    browser.get(server_url + "lizard")
    wait_for(lambda: browser.execute_script("return window.ncaStats.frames") > 0, "first frame")
    set_speed(browser, 4)
    target = browser.find_element(By.ID, "target")
    assert target.get_attribute("value") == "lizard_no_tail"
    tail = browser.find_element(By.ID, "k-tail")
    for _ in range(20):  # 20 key presses of 0.05: tail = 1
        tail.send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: text(browser, "k-tail-value") == "1.00", "tail at 1")
    assert browser.find_element(By.ID, "perturb-on").is_selected()  # the slider switched it on
    browser.find_element(By.ID, "reset").click()  # from the seed, perturbed throughout
    wait_for(lambda: step(browser) < 100, "reset")
    wait_for(lambda: step(browser) >= 200, "200 steps")
    loss_tailless = float(text(browser, "loss-target"))
    loss_complete = float(text(browser, "loss-complete"))
    assert loss_tailless < loss_complete, (loss_tailless, loss_complete)
    browser.save_screenshot(str(shots / "lizard_tail.png"))

    canvas = browser.find_element(By.ID, "board")
    browser.find_element(By.ID, "play").click()  # pause, then cut: the frame shows the cut
    wait_for(lambda: text(browser, "play") == "Play", "paused")
    alive = int(text(browser, "alive"))
    ActionChains(browser).move_to_element(canvas).click().perform()
    wait_for(lambda: int(text(browser, "alive")) < alive, "the cut")
    assert not js_errors(browser)
