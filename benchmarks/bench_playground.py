"""How fast the playgrounds run: CA steps per second shown and click-to-frame latency,
against the real server (``python -m experiments.playground``), with and without a browser.

python -m benchmarks.bench_playground                    # both, JSON lines
python -m benchmarks.bench_playground --browser=false    # WebSocket client only
python -m benchmarks.bench_playground --screenshots=docs # also the README's screenshots

Without a browser an aiohttp WebSocket client plays each page's session for --seconds and
counts the steps of the frames it receives; a "click" is an action (MNIST: paint a cell;
lizard: cut a circle) sent while playing, timed until the frame that acknowledges it
arrives. With a browser, headless Chromium (Selenium) opens the real pages: steps per
second are the page's own count of the steps of the frames it drew, and a click is a
real mouse click on the canvas, timed by the page from the event to the animation frame
after the acknowledging frame is drawn. Scenarios: MNIST plain and with 10 % adversaries;
the lizard plain and with the tail perturbation on (and every growing adversary painted,
when the server has any).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from benchmarks.common import emit, markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_float("seconds", 8.0, "Seconds of play per steps/s measurement.")
flags.DEFINE_integer("clicks", 20, "Clicks per latency measurement.", lower_bound=1)
flags.DEFINE_bool("browser", True, "Also measure through headless Chromium.")
flags.DEFINE_string("screenshots", None, "Write mnist.png and lizard.png here.")
flags.DEFINE_bool("markdown", False, "Also print a markdown table.")
flags.DEFINE_list("server_args", [], "Extra flags for experiments.playground.")
flags.DEFINE_bool("in_process", True, "Also time a session's frame in this process.")

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the server
def start_server() -> tuple[subprocess.Popen, str, float]:
    """The launch on a free port; (process, url, seconds until it served)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.playground", "--port=0", *FLAGS.server_args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("playground: http://"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.split()[1], time.perf_counter() - t0
    raise SystemExit(f"the playground did not start (exit {proc.wait()})")


def frame_header(data: bytes) -> dict:
    n = int.from_bytes(data[:4], "little")
    return json.loads(data[4 : 4 + n])


def summary(values_ms: list[float]) -> dict:
    v = np.asarray(values_ms)
    return {
        "median_ms": round(float(np.median(v)), 1),
        "p95_ms": round(float(np.percentile(v, 95)), 1),
        "max_ms": round(float(v.max()), 1),
        "n": len(v),
    }


# ----------------------------------------------------------------------------- no browser
SETUP = {
    "mnist": [{"type": "load_digit", "digit": 3}],
    "mnist+adversaries": [{"type": "load_digit", "digit": 3}, "ADVERSARIES"],
    "lizard": [],
    "lizard+tail+adversaries": [
        {"type": "k", "name": "tail", "value": 1.0},
        {"type": "perturb", "on": True},
        "GROWING_ADVERSARIES",
    ],
}
# The pages' default speeds (steps per frame).
SPEEDS = {"mnist": 2, "mnist+adversaries": 2, "lizard": 4, "lizard+tail+adversaries": 4}
CLICK = {
    "mnist": lambda i: {"type": "paint", "cells": [[2 + i % 20, 3, 1.0]], "blend": "max"},
    "lizard": lambda i: {"type": "cut", "row": 20 + i % 30, "col": 36, "radius": 3},
}


async def socket_scenario(url: str, scenario: str, speed: int) -> dict:
    import aiohttp

    kind = scenario.split("+")[0]
    ws_url = url.replace("http://", "ws://") + f"ws/{kind}"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        hello = json.loads((await ws.receive()).data)
        await ws.receive()  # first frame

        async def act(action: dict) -> dict:
            await ws.send_str(json.dumps(action))
            while True:
                msg = await ws.receive()
                if msg.type.name == "TEXT":
                    raise SystemExit(f"{scenario}: {msg.data}")
                header = frame_header(msg.data)
                if header.get("ack") == action.get("seq") or "seq" not in action:
                    return header

        for action in SETUP[scenario]:
            if action == "ADVERSARIES":  # a 3-cell lattice of adversaries over the digit
                await act({"type": "step", "n": 50})
                await act(
                    {
                        "type": "adversary",
                        "cells": [[r, c] for r in range(4, 24, 3) for c in range(6, 22, 3)],
                    }
                )
            elif action == "GROWING_ADVERSARIES":
                for j, name in enumerate(hello["adversaries"]):
                    cells = [[r, c] for r in range(24 + j, 48, 3) for c in range(24, 48, 3)]
                    await act({"type": "adversary", "name": name, "cells": cells})
            else:
                await act(action)
        await act({"type": "speed", "steps_per_frame": speed})
        await act({"type": "play", "on": True})
        start, t0, frames = None, time.perf_counter(), 0
        while time.perf_counter() - t0 < FLAGS.seconds:
            header = frame_header((await ws.receive()).data)
            start = header["step"] if start is None else start
            frames += 1
        seconds = time.perf_counter() - t0
        steps = header["step"] - start
        latencies = []
        for i in range(FLAGS.clicks):
            await asyncio.sleep(0.1)
            action = {**CLICK[kind](i), "seq": 10_000 + i}
            t = time.perf_counter()
            await ws.send_str(json.dumps(action))
            while True:
                msg = await ws.receive()
                if (
                    msg.type.name == "BINARY"
                    and (frame_header(msg.data).get("ack") or 0) >= action["seq"]
                ):
                    break
            latencies.append(1000 * (time.perf_counter() - t))
    return {
        "client": "websocket",
        "scenario": scenario,
        "steps_per_frame": speed,
        "steps_per_s": round(steps / seconds, 1),
        "frames_per_s": round(frames / seconds, 1),
        "click": summary(latencies),
    }


# ----------------------------------------------------------------------------- browser
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        raise SystemExit("headless Chromium not found: apt-get install -y chromium chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    return webdriver.Chrome(service=Service(driver), options=options)


def browser_scenarios(url: str) -> list[dict]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_playground_browser import click_cells, living_cells, step, wait_for

    out = []
    driver = chromium()
    try:
        for scenario in ("mnist", "mnist+adversaries", "lizard", "lizard+tail+adversaries"):
            kind = scenario.split("+")[0]
            driver.get(url + kind)
            wait_for(lambda: driver.execute_script("return window.ncaStats.frames") > 0, "frames")
            canvas = driver.find_element(By.ID, "board")
            speed = int(driver.find_element(By.ID, "speed").get_attribute("value"))
            if kind == "mnist":
                ActionChains(driver).send_keys("3").perform()
                wait_for(lambda: step(driver) >= 100, "100 steps")
                if scenario.endswith("adversaries"):
                    driver.find_element(By.ID, "tool-adversary").click()
                    click_cells(driver, canvas, 28, living_cells(driver, 28)[::7])
                    driver.find_element(By.ID, "tool-draw").click()
            elif scenario.endswith("adversaries"):
                tail = driver.find_element(By.ID, "k-tail")
                for _ in range(20):
                    tail.send_keys(Keys.ARROW_RIGHT)
                for button in driver.find_elements(By.CSS_SELECTOR, "#tools button[id^=tool-adv-]"):
                    if button.get_attribute("id") == "tool-adv-none":
                        continue
                    button.click()
                    cells = [(r, c) for r in range(26, 46, 4) for c in range(26, 46, 4)]
                    click_cells(driver, canvas, 72, cells)
                driver.find_element(By.ID, "tool-cut").click()
            time.sleep(2.0)  # the page's rate is over its last 2 s
            rates = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < FLAGS.seconds:
                time.sleep(0.5)
                rate = driver.execute_script("return window.ncaStats.stepsPerSecond")
                if rate is not None:  # null while paused or still measuring
                    rates.append(rate)
            driver.execute_script("window.ncaStats.latencies = []")
            size = canvas.size["width"]
            for i in range(FLAGS.clicks):
                # MNIST: draw in the top rows; lizard: cut small circles (radius slider 2).
                if kind == "lizard" and i == 0:
                    driver.execute_script(
                        "const r = document.getElementById('cut-radius'); r.value = 2;"
                        "r.dispatchEvent(new Event('input'))"
                    )
                x = (0.1 + 0.8 * (i % 10) / 10) * size - size / 2
                y = (0.06 if kind == "mnist" else 0.3 + 0.04 * (i // 10)) * size - size / 2
                ActionChains(driver).move_to_element_with_offset(
                    canvas, int(x), int(y)
                ).click().perform()
                time.sleep(0.3)
            latencies = wait_for(
                lambda: (lambda v: v if len(v) >= FLAGS.clicks else None)(
                    driver.execute_script("return window.ncaStats.latencies")
                ),
                "click latencies",
                timeout=30,
            )
            out.append(
                {
                    "client": "chromium",
                    "scenario": scenario,
                    "steps_per_frame": speed,
                    "steps_per_s": round(statistics.median(rates), 1),
                    "steps_per_s_min": round(min(rates), 1),
                    "click": summary(latencies),
                }
            )
            emit(out[-1])
    finally:
        driver.quit()
    return out


def screenshots(url: str, folder: Path) -> None:
    """The README's pictures: a 3 being hijacked by adversaries; the lizard losing its tail
    under the tail perturbation."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_playground_browser import click_cells, living_cells, step, wait_for

    folder.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        driver.get(url + "mnist")
        wait_for(lambda: driver.execute_script("return window.ncaStats.frames") > 0, "frames")
        ActionChains(driver).send_keys("3").perform()
        wait_for(lambda: step(driver) >= 200, "200 steps")
        driver.find_element(By.ID, "tool-adversary").click()
        canvas = driver.find_element(By.ID, "board")
        click_cells(driver, canvas, 28, living_cells(driver, 28)[::7])
        start = step(driver)
        wait_for(lambda: step(driver) >= start + 12, "12 steps")  # mid-hijack
        driver.find_element(By.ID, "play").click()
        time.sleep(0.5)
        driver.save_screenshot(str(folder / "playground_mnist.png"))

        driver.get(url + "lizard")
        wait_for(lambda: driver.execute_script("return window.ncaStats.frames") > 0, "frames")
        tail = driver.find_element(By.ID, "k-tail")
        for _ in range(20):
            tail.send_keys(Keys.ARROW_RIGHT)
        driver.find_element(By.ID, "reset").click()
        wait_for(lambda: step(driver) >= 300, "300 steps")
        driver.find_element(By.ID, "play").click()
        time.sleep(0.5)
        driver.save_screenshot(str(folder / "playground_lizard.png"))
    finally:
        driver.quit()


def session_costs() -> list[dict]:
    """The server's own work per frame, in this process (no socket, no browser): wall and
    CPU milliseconds of ``tick`` + ``frame`` (the steps, the view, the packing), after a
    compile. CPU time does not count the waits for a busy machine's cores."""
    from nca_adv.playground import models, sessions

    mnist_models, lizard_models = models.load_mnist_models(), models.load_lizard_models()
    out = []
    for scenario, speed in SPEEDS.items():
        if scenario.startswith("mnist"):
            s = sessions.MnistSession(mnist_models, speed=speed)
            s.load_digit(3)
            if scenario.endswith("adversaries"):
                s.handle(
                    json.dumps(
                        {
                            "type": "adversary",
                            "cells": [[r, c] for r in range(4, 24, 3) for c in range(6, 22, 3)],
                        }
                    )
                )
        else:
            s = sessions.LizardSession(lizard_models, speed=speed)
            if scenario.endswith("adversaries"):
                s.set_ks(tail=1.0)
                s.perturb_on = True
                for j, name in enumerate(s.adversary_names):
                    cells = [[r, c] for r in range(24 + j, 48, 3) for c in range(24, 48, 3)]
                    s.handle(json.dumps({"type": "adversary", "name": name, "cells": cells}))
        s.playing = True
        for _ in range(5):  # compile, warm up
            s.tick(), s.frame()
        wall, cpu = [], []
        for _ in range(100):
            w0, c0 = time.perf_counter(), time.process_time()
            s.tick(), s.frame()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        cpu_ms = 1000 * statistics.median(cpu)
        out.append(
            {
                "client": "in-process",
                "scenario": scenario,
                "steps_per_frame": speed,
                "frame_wall_ms": round(1000 * statistics.median(wall), 2),
                "frame_cpu_ms": round(cpu_ms, 2),
                "steps_per_cpu_s": round(1000 * speed / max(cpu_ms, 1e-3), 1),
            }
        )
        emit(out[-1])
    return out


def main(argv):
    del argv
    if FLAGS.in_process:
        session_costs()
    proc, url, startup = start_server()
    try:
        records = [
            {
                "client": "server",
                "scenario": "start-up (load + compile)",
                "seconds": round(startup, 1),
            }
        ]
        emit(records[0])
        for scenario, speed in SPEEDS.items():
            records.append(asyncio.run(socket_scenario(url, scenario, speed)))
            emit(records[-1])
        if FLAGS.browser:
            records += browser_scenarios(url)
        if FLAGS.screenshots:
            screenshots(url, Path(FLAGS.screenshots))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    emit({"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()})
    if FLAGS.markdown:
        rows = [
            {
                "client": r["client"],
                "scenario": r["scenario"],
                "steps/frame": r["steps_per_frame"],
                "steps/s": r["steps_per_s"],
                "click median ms": r["click"]["median_ms"],
                "click p95 ms": r["click"]["p95_ms"],
                "click max ms": r["click"]["max_ms"],
            }
            for r in records
            if "click" in r
        ]
        print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    app.run(main)
