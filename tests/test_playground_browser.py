"""The playgrounds in a real browser: the launch serves, headless Chromium (Selenium) drives
the pages with key presses, clicks, drags and slider keys, and the numbers are read back
from the pages. Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); without them the module is skipped with one line naming the install command."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

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
MAX_SESSIONS = 4
SERVER_LOG: list[str] = []  # the launch's output, for the last test


@pytest.fixture(scope="module")
def server_url():
    """``python -m experiments.playground --port=0`` until the module ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.playground",
            "--port=0",
            f"--max_sessions={MAX_SESSIONS}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read():
        for ln in proc.stdout:
            SERVER_LOG.append(ln)
            lines.put(ln)

    threading.Thread(target=read, daemon=True).start()
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


def viewport(driver, width: int, height: int) -> None:
    """The page's own size (the window's inner size), exactly."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def first_frame(driver) -> None:
    wait_for(lambda: driver.execute_script("return window.ncaStats.frames") > 0, "first frame")


def rect(driver, selector: str) -> dict:
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width};",
        selector,
    )


@contextlib.contextmanager
def held_sessions(url: str, n: int):
    """``n`` sessions held open by a client that is not a browser, until the block ends."""
    from aiohttp import ClientSession

    loop = asyncio.new_event_loop()
    release, ready = asyncio.Event(), threading.Event()

    async def hold():
        async with ClientSession() as client:
            sockets = []
            for _ in range(n):
                ws = await client.ws_connect(url.replace("http", "ws", 1) + "ws/lizard")
                assert (await ws.receive_json())["type"] == "hello"
                sockets.append(ws)
            ready.set()
            await release.wait()
            for ws in sockets:
                await ws.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(hold()), daemon=True)
    thread.start()
    assert ready.wait(30), "could not hold the sessions"
    try:
        yield
    finally:
        loop.call_soon_threadsafe(release.set)
        thread.join(30)


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
    wait_for(  # the slider switched it on (a frame already on its way may show it off)
        lambda: browser.find_element(By.ID, "perturb-on").is_selected(), "perturbation on"
    )
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


def test_switching_pages_never_busy(server_url, browser):
    """The header links, 20 times: each page leaving frees its session at once (also
    when the browser keeps it in its back/forward cache), so no page is ever "busy"."""
    browser.get(server_url + "mnist")
    first_frame(browser)
    for i in range(20):
        other = "lizard" if i % 2 == 0 else "mnist"
        browser.find_element(By.CSS_SELECTOR, f'header nav a[href="/{other}"]').click()
        wait_for(lambda o=other: browser.current_url.endswith("/" + o), f"page {other}")
        wait_for(
            lambda: (
                "busy" in browser.title
                or browser.execute_script("return window.ncaStats && window.ncaStats.frames > 0")
            ),
            f"{other}'s first frame",
        )
        assert "busy" not in browser.title, f"switch {i + 1}: the busy page"
        assert "busy" not in text(browser, "notice").lower(), f"switch {i + 1}"
    assert not js_errors(browser)


def test_hidden_page_stops_computing(server_url, browser):
    """A page in a background tab says so: its session stops computing until it is shown
    again (the document's visibility, as the browser reports it, is simulated)."""
    browser.get(server_url + "lizard")
    first_frame(browser)
    wait_for(lambda: step(browser) > 20, "playing")
    hide = (
        "Object.defineProperty(document, 'hidden', {value: arguments[0], configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    browser.execute_script(hide, True)
    wait_for(lambda: text(browser, "rate") == "stopped while hidden", "stopped")
    still = step(browser)
    time.sleep(1.0)
    assert step(browser) == still and text(browser, "play") == "Pause"
    browser.execute_script(hide, False)
    wait_for(lambda: step(browser) > still + 8, "playing again once shown")


@pytest.mark.parametrize("page", ["mnist", "lizard"])
def test_space_presses_the_focused_button(server_url, browser, page):
    """Space on a focused button is that button's key (as Enter is); Space with no
    control focused plays and pauses. The rate says "paused" while paused."""
    browser.get(server_url + page)
    first_frame(browser)
    wait_for(lambda: text(browser, "play") == "Pause", "playing")
    rates = set()
    for _ in range(10):  # the first second: never a stale or zero rate
        rates.add(text(browser, "rate"))
        time.sleep(0.1)
    assert "0 steps/s" not in rates, rates
    browser.find_element(By.ID, "play").click()
    wait_for(lambda: text(browser, "play") == "Play", "paused")
    wait_for(lambda: text(browser, "rate") == "paused", "the rate says paused")
    button = "tool-erase" if page == "mnist" else "tool-adv-tailless"
    browser.execute_script("document.getElementById(arguments[0]).focus()", button)
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    wait_for(
        lambda: browser.find_element(By.ID, button).get_attribute("aria-pressed") == "true",
        "the focused button pressed by Space",
    )
    time.sleep(0.3)
    assert text(browser, "play") == "Play", "Space on a button toggled play"
    browser.execute_script("document.activeElement.blur()")
    ActionChains(browser).send_keys(Keys.SPACE).perform()  # no control focused: play
    wait_for(lambda: text(browser, "play") == "Pause", "Space plays")
    assert not js_errors(browser)


def test_grid_from_the_keyboard_is_announced(server_url, browser):
    browser.get(server_url + "mnist")
    first_frame(browser)
    browser.execute_script("document.getElementById('board').focus()")
    keys = ActionChains(browser)
    for key in (Keys.ENTER, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ENTER, Keys.ARROW_DOWN):
        keys.send_keys(key)
    keys.send_keys(Keys.SPACE).perform()  # on the grid, Space draws (it does not pause)
    wait_for(lambda: len(living_cells(browser, 28)) >= 10, "cells drawn from the keyboard")
    assert text(browser, "play") == "Pause"
    said = browser.find_element(By.ID, "announce").get_attribute("textContent")
    assert said, "nothing announced"
    wait_for(
        lambda: "majority" in browser.find_element(By.ID, "announce").get_attribute("textContent"),
        "the vote announced",
    )


def test_lizard_palette_curves_swatches_and_notes(server_url, browser):
    """The saved palette is the lizard page's palette from the start; the two loss curves
    differ by a dash; the adversary swatches show on a pressed button; the page says what
    the shipped attacks do."""
    from nca_adv.playground.sessions import PALETTES, contrast

    browser.get(server_url + "mnist")
    browser.execute_script("localStorage.setItem('nca-adv-palette', 'colorblind')")
    try:
        browser.get(server_url + "lizard")
        first_frame(browser)
        assert browser.find_element(By.ID, "palette").get_attribute("value") == "colorblind"
        r, g, b = PALETTES["colorblind"][3].tolist()
        target_key = browser.find_element(By.ID, "swatch-target")
        wait_for(
            lambda: (
                target_key.value_of_css_property("border-top-color")
                in (f"rgb({r}, {g}, {b})", f"rgba({r}, {g}, {b}, 1)")
            ),
            "the target curve in the saved palette's colour",
        )
        assert target_key.value_of_css_property("border-top-style") == "solid"
        complete_key = browser.find_element(By.ID, "swatch-complete")
        assert complete_key.value_of_css_property("border-top-style") == "dashed"
    finally:
        browser.execute_script("localStorage.removeItem('nca-adv-palette')")

    red = browser.find_element(By.ID, "tool-adv-red")
    red.click()
    wait_for(lambda: red.get_attribute("aria-pressed") == "true", "red pressed")
    pressed = browser.execute_script("return getComputedStyle(arguments[0]).backgroundColor", red)
    ring = browser.execute_script(
        "return getComputedStyle(document.getElementById('swatch-adv-1')).boxShadow"
    )
    assert "rgb(255, 255, 255)" in ring  # a white ring around the swatch
    rgb = [int(v) for v in pressed[pressed.index("(") + 1 : pressed.index(")")].split(",")[:3]]
    assert contrast(rgb, (255, 255, 255)) >= 3.0, pressed
    swatch = browser.execute_script(
        "return getComputedStyle(document.getElementById('swatch-adv-1')).backgroundColor"
    )
    assert swatch.startswith("rgb(200, 30, 30)"), swatch  # the red adversary is red

    note = text(browser, "adv-note")
    assert "leaves the tail on" in note or "% of its loss" in note, note
    browser.find_element(By.CSS_SELECTOR, "#attack-notes summary").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#notes-body tr")
    assert len(rows) == 6, [row.text for row in rows]
    assert "same place" in browser.find_element(By.CSS_SELECTOR, "main").text
    assert not js_errors(browser)


def test_notices_stay_in_view_and_busy_stays_said(server_url, browser, tmp_path_factory):
    """At 1280x900 a notice (an error, then "busy") wraps inside the board column (which
    keeps the grid's width) and is in view; the busy notice is not replaced by "the
    session has ended" when the server closes the busy socket."""
    shots = tmp_path_factory.mktemp("playground_screenshots")
    viewport(browser, 1280, 900)
    try:
        for page in ("mnist", "lizard"):
            browser.get(server_url + page)
            first_frame(browser)
            width = rect(browser, ".board")["width"]
            canvas = rect(browser, "#board")["width"]
            browser.execute_script("window.ncaSession.send({type: 'nonsense'})")
            wait_for(lambda: "unknown action" in text(browser, "notice"), "the error notice")
            notice = rect(browser, "#notice")
            assert rect(browser, ".board")["width"] == width, page
            assert notice["width"] <= canvas + 2 and notice["bottom"] <= 900, (page, notice)

        browser.execute_script("window.ncaSession.leave()")  # this page's slot too
        with held_sessions(server_url, MAX_SESSIONS):  # every slot taken
            browser.execute_script("window.ncaSession.reconnect()")  # one more: busy
            wait_for(lambda: "busy" in text(browser, "notice"), "the busy notice", timeout=20)
            time.sleep(0.6)
            assert "busy" in text(browser, "notice"), text(browser, "notice")
            notice = rect(browser, "#notice")
            assert rect(browser, ".board")["width"] == width
            assert 0 <= notice["top"] and notice["bottom"] <= 900, notice
            browser.save_screenshot(str(shots / "notice_busy_1280x900.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_narrow_window_layout(server_url, browser):
    """600 px wide: Play near the top, the grid within the window (no sideways scroll);
    narrower still, the grid shrinks."""
    try:
        for page in ("mnist", "lizard"):
            viewport(browser, 600, 900)
            browser.get(server_url + page)
            first_frame(browser)
            assert rect(browser, "#play")["top"] < 200, page
            assert rect(browser, "#board")["right"] <= 600, page
            assert browser.execute_script("return document.documentElement.scrollWidth") <= 600
            viewport(browser, 360, 800)
            width = rect(browser, "#board")["width"]
            assert width <= 360 - 16 and width < (448 if page == "mnist" else 504), width
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_foreign_host_is_refused(server_url):
    """A DNS-rebinding-shaped request (Host and Origin on another name) gets 403."""
    port = urlsplit(server_url).port
    for host, expected in (("evil.example:8765", 403), (f"evil.example:{port}", 403)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/mnist", headers={"Host": host, "Origin": f"http://{host}"})
        response = conn.getresponse()
        assert response.status == expected, host
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        conn.close()


def test_server_log_has_no_tracebacks(server_url):
    """Last: an over-long request line and a tab that leaves mid-frame (its connection
    dropped while the server plays) are one line each in the server's log at most."""
    import socket
    import struct

    port = urlsplit(server_url).port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.")

    # A tab leaving mid-frame: a WebSocket by hand, playing at one step per frame, then
    # the connection reset (no closing handshake) while frames are on their way.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            (
                f"GET /ws/lizard HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b" 101 " in sock.recv(4096).split(b"\r\n", 1)[0]
        for message in (
            b'{"type": "speed", "steps_per_frame": 1}',
            b'{"type": "play", "on": true}',
        ):
            mask = os.urandom(4)
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
            sock.sendall(bytes([0x81, 0x80 | len(message)]) + mask + body)
        received = 0
        while received < 200_000:  # frames arrive
            received += len(sock.recv(65536))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # closed with a reset
    time.sleep(1.5)
    log = "".join(SERVER_LOG)
    assert "Traceback" not in log, log[-3000:]
    assert "Cannot write to closing transport" not in log, log[-3000:]
