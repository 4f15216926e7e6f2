"""The playgrounds without a browser: the session classes replay the evaluations exactly
(same steps, same keys), bad messages change nothing, and the server's limits hold
(aiohttp's test client); the launch's start-up errors are one line, exit 2."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import adversary_eval, perturbation_eval
from nca_adv.io import data, targets
from nca_adv.models import mnist
from nca_adv.playground import models, protocol
from nca_adv.playground.models import LizardModels, MnistModels
from nca_adv.playground.sessions import (
    CHUNK_STEPS,
    MAX_STEPS_PER_ACTION,
    PALETTES,
    LizardSession,
    MnistSession,
    contrast,
    unpack_frame,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200  # the evaluations' default
DIGIT = 0  # the first test digit (a 7): stream 0 in eval_mnist, with and without adversaries


@pytest.fixture(scope="module")
def mnist_models() -> MnistModels:
    return models.load_mnist_models("mnist", "mnist_adversary")


@pytest.fixture(scope="module")
def lizard_models() -> LizardModels:
    """The shipped lizard and perturbations, two targets, and the lizard itself as the one
    adversary (its mixed step is the plain step bit for bit: a check of the brush)."""
    base = io.load_model("lizard", "growing")
    mats = {name: perturbation.load_matrix(name) for name in perturbation.SHIPPED_NAMES}
    tgts = {name: targets.load_target(name) for name in ("lizard", "lizard_no_tail")}
    return LizardModels(base, {"itself": base}, mats, tgts, {})


def send(session, **action) -> None:
    error = session.handle(json.dumps(action))
    assert error is None, error


def draw_digit(session: MnistSession, image: np.ndarray) -> None:
    """Put ``image`` on the grid pixel by pixel, one paint action per pixel."""
    for r, c in zip(*np.nonzero(image)):
        send(session, type="paint", cells=[[int(r), int(c), float(image[r, c])]], blend="set")


# ----------------------------------------------------------------------------- MNIST
def test_drawn_test_digit_classifies_as_eval_mnist(mnist_models):
    """eval_mnist --seed=0: Evaluator.run with split(PRNGKey(0))[0], digit i on stream i."""
    splits = data.load_mnist()
    image = data.to_float(splits.test_images[DIGIT])
    label = int(splits.test_labels[DIGIT])
    k_run, _ = jax.random.split(jax.random.PRNGKey(0))
    # batch_size 1: results do not depend on it, and the default pads one digit to 500
    evaluator = mnist.Evaluator(mnist_models.base, batch_size=1)
    stats = evaluator.run(image[None], np.array([label]), k_run, STEPS)

    session = MnistSession(mnist_models, seed=0)
    draw_digit(session, image)
    np.testing.assert_array_equal(session.image, image)
    send(session, type="step", n=STEPS)
    counts = session.counts()
    assert session.step == STEPS
    assert counts.sum() == stats.alive[-1, 0]
    assert counts[label] == stats.correct[-1, 0]
    header, _ = unpack_frame(session.frame())
    assert header["majority"] == label == int(np.argmax(counts))


def test_adversaries_drawn_cell_by_cell_hijack_as_eval_mnist(mnist_models):
    """eval_mnist --adversary=mnist_adversary --adversary_fraction=0.1 --seed=0: the same
    mask drawn through the session's adversary actions gives the same votes, majority 8."""
    splits = data.load_mnist()
    image = data.to_float(splits.test_images[DIGIT])
    k_run, _ = jax.random.split(jax.random.PRNGKey(0))  # eval_mnist's
    counts = adversary_eval.mnist_attack(
        mnist_models.base, mnist_models.adversary, image[None], k_run, 0.1, STEPS
    )
    k_steps, k_mask = jax.random.split(k_run)  # mnist_attack's
    mask = adversaries.mnist_live_mask(jax.random.fold_in(k_mask, DIGIT), image, 0.1, False)
    on_digit = (np.asarray(mask)[..., 0] > 0) & (image > mnist.ALIVE_THRESHOLD)
    assert 0.05 < on_digit.sum() / (image > mnist.ALIVE_THRESHOLD).sum() < 0.2

    session = MnistSession(mnist_models, run_key=k_steps)
    draw_digit(session, image)
    for r, c in zip(*np.nonzero(on_digit)):  # one adversarial cell at a time
        send(session, type="adversary", cells=[[int(r), int(c)]])
    send(session, type="step", n=STEPS)
    np.testing.assert_array_equal(session.counts(), counts[-1, 0])
    header, payload = unpack_frame(session.frame())
    assert header["majority"] == adversaries.MNIST_TARGET
    assert header["adversaries"] == on_digit.sum()
    marks = np.frombuffer(payload[28 * 28 * 4 :], np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(marks, on_digit)

    send(session, type="remove_adversaries")  # the article's recovery, by hand
    assert not session.adversary.any() and session.image.sum() == image.sum()


def test_mnist_actions(mnist_models):
    session = MnistSession(mnist_models, seed=3)
    send(session, type="load_digit", digit=3)
    first = session.stream
    assert mnist_models.labels[first] == 3 and session.label == 3
    np.testing.assert_array_equal(session.image, data.to_float(mnist_models.images[first]))
    send(session, type="load_digit", digit=3)  # again: another 3 (a new draw)
    assert mnist_models.labels[session.stream] == 3
    again = MnistSession(mnist_models, seed=3)
    send(again, type="load_digit", digit=3)
    assert again.stream == first  # same seed, same picks

    send(session, type="adversary", cells=[[0, 0]])  # on empty ground: a cell is born
    assert session.image[0, 0] == 1.0 and session.adversary[0, 0]
    send(session, type="paint", cells=[[0, 0, 0.0]], blend="set")  # erased: no adversary
    assert not session.adversary[0, 0]
    send(session, type="paint", cells=[[1, 1, 0.3], [1, 1, 0.1]], blend="max")
    assert session.image[1, 1] == np.float32(0.3)

    send(session, type="speed", steps_per_frame=4)
    send(session, type="play", on=True)
    before = session.step
    assert session.tick() and session.step == before + 4
    send(session, type="step", n=1)  # a single step pauses
    assert not session.playing and not session.tick() and session.step == before + 5
    send(session, type="palette", name="colorblind", seq=7)
    header, payload = unpack_frame(session.frame())
    assert header["palette"] == "colorblind" and header["ack"] == 7 and header["speed"] == 4
    assert len(payload) == 28 * 28 * 5
    send(session, type="clear")
    assert session.step == 0 and session.image.sum() == 0 and session.stream == 0

    other = MnistSession(mnist_models)  # another tab: its own state
    assert other.step == 0 and other.image.sum() == 0


# ----------------------------------------------------------------------------- lizard
def test_tail_slider_equals_eval_growing_perturbation(lizard_models):
    """eval_growing --perturbation=tail --steps=200 --seed=0 (run 0, from the seed)."""
    a = perturbation.load_perturbation("tail")
    k_grow, k_run = jax.random.split(jax.random.PRNGKey(0))
    x0 = perturbation_eval.grow(lizard_models.base, 72, 72, jax.random.split(k_grow, 1), 0)
    runs = perturbation_eval.run_phases(
        lizard_models.base, a, x0, jax.random.split(k_run, 1), [(True, 0, STEPS)]
    )

    session = LizardSession(lizard_models, seed=0)
    send(session, type="k", name="tail", value=1)
    send(session, type="perturb", on=True)
    np.testing.assert_array_equal(session.matrix, a)
    send(session, type="step", n=STEPS)
    np.testing.assert_array_equal(np.asarray(session.x), runs[-1].state[0])
    send(session, type="target", name="lizard_no_tail")
    loss_tailless, loss_complete = session.losses()
    assert loss_tailless < loss_complete  # the tail perturbation works on the shipped lizard


def test_lizard_brush_cut_and_mix(lizard_models):
    plain = LizardSession(lizard_models)
    brushed = LizardSession(lizard_models)
    send(brushed, type="adversary", name="itself", cells=[[36, c] for c in range(20, 50)])
    for s in (plain, brushed):
        send(s, type="step", n=30)
    assert brushed.owner.sum() == 30
    np.testing.assert_array_equal(np.asarray(plain.x), np.asarray(brushed.x))  # a select

    alive = int(unpack_frame(plain.frame())[0]["alive"])
    send(plain, type="cut", row=36, col=36, radius=10)
    assert np.asarray(plain.x)[36, 36].sum() == 0
    assert unpack_frame(plain.frame())[0]["alive"] < alive

    send(plain, type="k", name="tail", value=0.5)
    send(plain, type="k", name="leg", value=-0.25)
    eye = np.eye(16, dtype=np.float32)
    mats = lizard_models.perturbations
    expected = eye + 0.5 * (mats["tail"] - eye) - 0.25 * (mats["leg"] - eye)
    np.testing.assert_allclose(plain.matrix, expected, atol=1e-6)
    header, payload = unpack_frame(plain.frame())
    assert header["ks"]["tail"] == 0.5 and len(payload) == 72 * 72 * 5

    send(brushed, type="adversary", name="none", cells=[[36, 20]])
    send(brushed, type="reset")
    assert brushed.step == 0 and brushed.owner.sum() == 0


# ----------------------------------------------------------------------------- bad input
def snapshot(session) -> dict:
    keep = {}
    for name, value in vars(session).items():
        if name.startswith("_") or name == "models":
            continue
        if isinstance(value, jax.Array | np.ndarray):
            value = np.array(value)
        elif isinstance(value, dict | list):
            value = json.loads(json.dumps(value))
        keep[name] = value
    return keep


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


COMMON_BAD = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"n": 1}', '"type"'),
    ('{"type": "explode"}', "unknown action type"),
    ('{"type": "step", "n": 0}', f"integer in [1, {MAX_STEPS_PER_ACTION}]"),
    (f'{{"type": "step", "n": {MAX_STEPS_PER_ACTION + 1}}}', "integer in [1, "),
    ('{"type": "visible", "on": "no"}', "true or false"),
    ('{"type": "step", "n": 1.5}', "integer"),
    ('{"type": "step", "n": true}', "integer"),
    ('{"type": "step"}', "needs field 'n'"),
    ('{"type": "step", "n": 1, "path": "/etc/passwd"}', "unknown field"),
    ('{"type": "play", "on": 1}', "true or false"),
    ('{"type": "speed", "steps_per_frame": 65}', "[1, 64]"),
    ('{"type": "palette", "name": "neon"}', "one of"),
    ('{"type": "play", "on": true, "seq": -1}', "seq"),
    ('{"type": "step", "n": NaN}', "finite"),
    ("[" * 100_000, "refused"),
    ("[" * 60_000, "not valid JSON"),
    ('{"type": "clear", "pad": "' + "x" * protocol.MAX_MESSAGE_BYTES + '"}', "limit is 65536"),
    (b'{"type": "clear"}', "binary"),
]
MNIST_BAD = [
    (
        '{"type": "paint", "cells": [[28, 0, 1]], "blend": "set"}',
        "row must be an integer in [0, 27]",
    ),
    ('{"type": "paint", "cells": [[0, -1, 1]], "blend": "set"}', "col"),
    ('{"type": "paint", "cells": [[0, 0, 1.5]], "blend": "set"}', "value"),
    ('{"type": "paint", "cells": [[0, 0]], "blend": "set"}', "[row, col, value]"),
    ('{"type": "paint", "cells": [], "blend": "set"}', "list of 1 to 784"),
    ('{"type": "paint", "cells": [[0, 0, 1]], "blend": "xor"}', "one of"),
    ('{"type": "paint", "cells": [[0, 0, 1], [0, 99, 1]], "blend": "set"}', "cells[1] col"),
    ('{"type": "adversary", "cells": [[0, 0, 1]]}', "[row, col]"),
    ('{"type": "load_digit", "digit": 10}', "[0, 9]"),
    ('{"type": "load_digit", "digit": "3"}', "integer"),
]
LIZARD_BAD = [
    ('{"type": "k", "name": "tail", "value": 2.05}', "[-1, 2]"),
    ('{"type": "k", "name": "tail", "value": -1.5}', "[-1, 2]"),
    ('{"type": "k", "name": "wing", "value": 1}', "one of"),
    ('{"type": "k", "name": "tail", "value": Infinity}', "finite"),
    ('{"type": "cut", "row": 72, "col": 0, "radius": 5}', "row"),
    ('{"type": "cut", "row": 0, "col": 0, "radius": 0}', "radius"),
    ('{"type": "target", "name": "../../etc/passwd"}', "one of"),
    ('{"type": "target", "name": "lizard_red.png"}', "one of"),
    ('{"type": "adversary", "name": "/tmp/model.npz", "cells": [[0, 0]]}', "one of"),
    ('{"type": "adversary", "name": "itself", "cells": [[0, 72]]}', "col"),
    ('{"type": "perturb", "on": "yes"}', "true or false"),
]


@pytest.mark.parametrize("kind", ["mnist", "lizard"])
def test_bad_messages_change_nothing(kind, mnist_models, lizard_models):
    if kind == "mnist":
        session, bad = MnistSession(mnist_models), COMMON_BAD + MNIST_BAD
        send(session, type="load_digit", digit=5)
        send(session, type="adversary", cells=[[10, 10]])
    else:
        session, bad = LizardSession(lizard_models), COMMON_BAD + LIZARD_BAD
        send(session, type="k", name="red", value=0.5)
    send(session, type="step", n=3)
    session.frame()
    before = snapshot(session)
    for raw, message in bad:
        error = session.handle(raw)
        assert error is not None and error["type"] == "error", raw[:60]
        assert message in error["message"], (raw[:60], error["message"])
        assert "\n" not in error["message"] and len(error["message"]) < 300
        assert_same(before, snapshot(session))


def test_mnist_adversary_refused_without_adversary(mnist_models):
    import dataclasses

    session = MnistSession(dataclasses.replace(mnist_models, adversary=None))
    before = snapshot(session)
    error = session.handle('{"type": "adversary", "cells": [[3, 3]]}')
    assert "no MNIST adversary" in error["message"]
    assert_same(before, snapshot(session))


# ----------------------------------------------------------------------------- page look
STATIC = ROOT / "nca_adv" / "playground" / "static"


def css_colour(name: str) -> tuple[int, int, int]:
    """A ``--name: #rrggbb`` custom property of the pages' style sheet."""
    import re

    found = re.search(rf"--{name}:\s*#([0-9a-fA-F]{{6}})", (STATIC / "style.css").read_text())
    assert found, name
    return tuple(int(found.group(1)[i : i + 2], 16) for i in (0, 2, 4))


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_every_vote_colour_contrasts_with_the_page(palette):
    """WCAG contrast of each vote colour against the page (--bg) and the grid and the
    panels (white): at least 3:1, the minimum for graphics."""
    assert len(PALETTES[palette]) == 10
    for background in (css_colour("bg"), (255, 255, 255)):
        for digit, colour in enumerate(PALETTES[palette]):
            ratio = contrast(colour, background)
            assert ratio >= 3.0, (palette, digit, colour.tolist(), background, round(ratio, 2))
    assert len({tuple(c) for c in PALETTES[palette]}) == 10  # ten different colours


def test_contrast_is_wcag():
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((221, 221, 221), (255, 255, 255)) == pytest.approx(1.36, abs=0.01)
    assert contrast((119, 119, 119), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)


def test_attack_notes_from_the_ladder_record(tmp_path):
    """The page's notes on the shipped attacks: the ladder's evaluation where it has one,
    the measured numbers otherwise, nothing for attacks that are not the shipped ones."""
    shipped_advs = {"tailless": "lizard_no_tail_adversary", "red": "lizard_red_adversary"}
    shipped_mats = {name: name for name in perturbation.SHIPPED_NAMES}
    none = models.attack_notes(shipped_advs, shipped_mats, tmp_path / "missing.json")
    ratios = {row["name"]: row["ratio"] for row in none["perturbations"]}
    assert ratios == models.SHIPPED_RATIOS
    assert {row["name"]: row["authors"] for row in none["perturbations"]} == (models.AUTHORS_RATIOS)
    assert "leaves the tail on" in none["adversaries"]["tailless"]
    assert "red" not in none["adversaries"]

    ladder = tmp_path / "ladder.json"
    ladder.write_text(
        json.dumps(
            {
                "tail": {"evaluation": {"ratio": 0.31, "runs": 8, "loss": 0.01}},
                "leg": {"iterations": 40, "trials": []},  # no evaluation: the fallback
                "lizard_no_tail_adversary": {"evaluation": {"ratio": 0.5, "runs": 12}},
            }
        )
    )
    notes = models.attack_notes(shipped_advs, shipped_mats, ladder)
    ratios = {row["name"]: row["ratio"] for row in notes["perturbations"]}
    assert ratios["tail"] == 0.31 and ratios["leg"] == models.SHIPPED_RATIOS["leg"]
    assert (
        "50 %" in notes["adversaries"]["tailless"] and "12 runs" in notes["adversaries"]["tailless"]
    )
    assert "#" not in json.dumps(notes)  # the page speaks to readers (no issue numbers)

    other = models.attack_notes({"mine": "/tmp/adv.npz"}, {"tail": "/tmp/tail.npy"}, ladder)
    assert other == {"perturbations": [], "adversaries": {}}
    (tmp_path / "bad.json").write_text("[1, 2")
    assert models.attack_notes(shipped_advs, {}, tmp_path / "bad.json")["adversaries"]


def test_long_steps_run_in_chunks_and_hidden_sessions_stop(mnist_models):
    session = MnistSession(mnist_models)
    error = session.handle(json.dumps({"type": "step", "n": 3 * CHUNK_STEPS + 5}), defer=True)
    assert error is None and session.step == 0 and session.pending_steps == 3 * CHUNK_STEPS + 5
    assert session.run_pending(CHUNK_STEPS) == 2 * CHUNK_STEPS + 5
    assert session.step == CHUNK_STEPS
    assert session.run_pending() == 0 and session.step == 3 * CHUNK_STEPS + 5

    send(session, type="play", on=True)
    assert session.tick()
    send(session, type="visible", on=False)  # the page is hidden: no more computing
    step = session.step
    assert session.playing and not session.running and not session.tick()
    assert session.step == step
    send(session, type="visible", on=True)
    assert session.tick() and session.step > step
    session.unwatched = True  # the server's mark for a page that stopped pinging
    assert not session.tick()


# ----------------------------------------------------------------------------- server
def run_client(playground, scenario, **app_kw):
    """Run ``scenario(client)`` against the real app on aiohttp's test server."""
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        async with TestClient(TestServer(playground.app(), **app_kw)) as client:
            return await scenario(client)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def playground(mnist_models, lizard_models):
    from nca_adv.playground.server import Playground

    return Playground(mnist_models, lizard_models, max_sessions=2)


async def _hello_and_frame(ws):
    hello = await ws.receive_json()
    first = await ws.receive_bytes()
    return hello, unpack_frame(first)[0]


def test_server_pages_and_static_files(playground):
    async def scenario(client):
        out = {}
        for path in ("/", "/mnist", "/lizard", "/static/common.js", "/static/nope.js"):
            r = await client.get(path)
            out[path] = (r.status, r.headers.get("Content-Type"), r.headers.get("CSP"))
            out[path + " csp"] = r.headers.get("Content-Security-Policy", "")
        r = await client.get("/static/..%2Fserver.py")
        out["traversal"] = r.status
        return out

    out = run_client(playground, scenario)
    assert out["/"][0] == out["/mnist"][0] == out["/lizard"][0] == 200
    assert out["/static/common.js"][:2] == (200, "text/javascript")
    assert out["/static/nope.js"][0] == 404 and out["traversal"] == 404
    assert "default-src 'self'" in out["/mnist csp"]


def test_server_session_protocol_and_limits(playground):
    async def scenario(client):
        out = {}
        ws = await client.ws_connect("/ws/mnist")
        hello, frame = await _hello_and_frame(ws)
        out["hello"], out["first"] = hello, frame
        await ws.send_str(json.dumps({"type": "load_digit", "digit": 4, "seq": 11}))
        out["after_load"] = unpack_frame(await ws.receive_bytes())[0]
        await ws.send_str('{"type": "load_digit", "digit": 11}')
        out["range"] = await ws.receive_json()
        await ws.send_str('{"type": "clear", "x": "' + "y" * 70_000 + '"}')
        out["oversize"] = await ws.receive_json()
        await ws.send_str(json.dumps({"type": "step", "n": 2, "seq": 12}))
        out["after_step"] = unpack_frame(await ws.receive_bytes())[0]
        await ws.send_str(json.dumps({"type": "play", "on": True}))
        frames = [unpack_frame(await ws.receive_bytes())[0] for _ in range(4)]
        out["playing_steps"] = [f["step"] for f in frames]

        lizard = await client.ws_connect("/ws/lizard")  # a second tab: its own session
        out["lizard_hello"], out["lizard_first"] = await _hello_and_frame(lizard)
        out["sessions"] = len(playground.sessions)
        third = await client.ws_connect("/ws/lizard")  # past --max_sessions
        out["busy"] = await third.receive_json()
        out["busy_page"] = (await client.get("/lizard")).status
        await third.close()

        await ws.send_str('{"type": "clear", "x": "' + "y" * 1_100_000 + '"}')
        closing = await ws.receive()
        while closing.type.name in ("BINARY", "TEXT"):  # frames still in flight
            closing = await ws.receive()
        out["hard_limit"] = closing.type.name
        await lizard.close()
        for _ in range(100):
            if not playground.sessions:
                break
            await asyncio.sleep(0.05)
        out["sessions_after"] = len(playground.sessions)
        out["cross_origin"] = (
            await client.get(
                "/ws/mnist",
                headers={
                    "Origin": "http://evil.example",
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
        ).status
        return out

    out = run_client(playground, scenario)
    assert out["hello"]["kind"] == "mnist" and out["hello"]["adversary"] is True
    assert out["first"]["step"] == 0 and out["first"]["majority"] is None
    assert out["after_load"]["label"] == 4 and out["after_load"]["ack"] == 11
    assert out["range"]["type"] == "error" and "[0, 9]" in out["range"]["message"]
    assert out["oversize"]["type"] == "error" and "65536" in out["oversize"]["message"]
    assert out["after_step"]["step"] == 2 and out["after_step"]["label"] == 4  # unchanged
    assert out["playing_steps"] == sorted(out["playing_steps"]) and out["playing_steps"][-1] > 2
    assert out["lizard_hello"]["perturbations"] == list(perturbation.SHIPPED_NAMES)
    assert out["lizard_first"]["step"] == 0
    assert out["sessions"] == 2
    assert out["busy"]["type"] == "busy" and "--max_sessions" in out["busy"]["message"]
    assert out["busy_page"] == 503
    assert out["hard_limit"] in ("CLOSE", "CLOSED", "CLOSING", "ERROR")
    assert out["sessions_after"] == 0  # freed when their sockets closed
    assert out["cross_origin"] == 403


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_server_refuses_foreign_host_names(mnist_models, lizard_models):
    """DNS rebinding: a page on evil.example whose name resolves to this machine sends
    Host and Origin evil.example: refused (403), with the security headers, whatever the
    path; the names the server was started for pass."""
    from nca_adv.playground.server import SECURITY_HEADERS, Playground

    playground = Playground(mnist_models, lizard_models, max_sessions=2, host="127.0.0.1")

    async def scenario(client):
        port = client.server.port
        out = {}
        evil = {"Host": "evil.example:8765", "Origin": "http://evil.example:8765"}
        for path in ("/", "/mnist", "/static/common.js", "/ws/mnist"):
            extra = UPGRADE if path.startswith("/ws") else {}
            r = await client.get(path, headers={**evil, **extra})
            out[path] = (r.status, dict(r.headers))
        for host in (f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.1.evil.example:{port}"):
            out[host] = (await client.get("/mnist", headers={"Host": host})).status
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            out[host] = (await client.get("/mnist", headers={"Host": host})).status
        origin = f"http://localhost:{port}"
        ws = await client.ws_connect(
            "/ws/mnist", headers={"Host": f"localhost:{port}", "Origin": origin}
        )
        out["ws_ok"] = (await ws.receive_json())["type"]
        await ws.close()
        r = await client.get("/nope")
        out["404"] = (r.status, dict(r.headers))
        return port, out

    port, out = run_client(playground, scenario)
    for path in ("/", "/mnist", "/static/common.js", "/ws/mnist"):
        status, headers = out[path]
        assert status == 403, path
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (path, name)
    assert out[f"evil.example:{port}"] == out["127.0.0.1:1"] == 403
    assert out[f"127.0.0.1.evil.example:{port}"] == 403
    assert out[f"127.0.0.1:{port}"] == out[f"localhost:{port}"] == out[f"[::1]:{port}"] == 200
    assert out["ws_ok"] == "hello"
    assert out["404"][0] == 404 and out["404"][1].get("X-Content-Type-Options") == "nosniff"
    assert "default-src 'self'" in out["404"][1].get("Content-Security-Policy", "")

    from nca_adv.playground.server import allowed_host_names

    assert "example.org" in allowed_host_names("example.org")
    assert "evil.example" not in allowed_host_names("0.0.0.0")


def test_server_stops_unwatched_sessions_and_frees_them(mnist_models, lizard_models):
    """A hidden page's session stops computing at once; one whose page went silent (a
    page frozen in the back/forward cache) stops after idle_after and is closed, its slot
    freed, after close_after."""
    from nca_adv.playground.server import Playground

    playground = Playground(
        mnist_models, lizard_models, max_sessions=1, idle_after=0.4, close_after=1.2
    )

    async def frames_for(ws, seconds):
        """(time, step) of the frames received over ``seconds``; stops at a close."""
        loop = asyncio.get_running_loop()
        end, out = loop.time() + seconds, []
        while loop.time() < end:
            try:
                msg = await ws.receive(timeout=end - loop.time())
            except TimeoutError:
                break
            if msg.type.name != "BINARY":
                out.append((loop.time(), msg.type.name))
                break
            out.append((loop.time(), unpack_frame(msg.data)[0]["step"]))
        return out

    async def scenario(client):
        loop = asyncio.get_running_loop()
        out = {}
        ws = await client.ws_connect("/ws/mnist")
        await _hello_and_frame(ws)
        await ws.send_str('{"type": "step", "n": 1}')  # compiled (when run alone)
        await ws.receive_bytes()
        await ws.send_str('{"type": "play", "on": true}')
        await frames_for(ws, 0.2)
        await ws.send_str('{"type": "visible", "on": false}')  # the page is hidden
        await frames_for(ws, 0.1)
        out["hidden"] = await frames_for(ws, 0.3)
        await ws.send_str('{"type": "visible", "on": true}')  # shown again: it plays on
        t0 = loop.time()
        seen = await frames_for(ws, 3.0)  # then silence: stops, then closed
        out["closed"] = seen[-1][1]
        steps = [(t - t0, s) for t, s in seen if isinstance(s, int)]
        out["last_frame_after"] = steps[-1][0]
        out["closed_after"] = seen[-1][0] - t0
        out["close_reason"] = ws.close_code, getattr(ws, "_close_message", None)
        for _ in range(40):
            if not playground.sessions:
                break
            await asyncio.sleep(0.05)
        out["sessions"] = len(playground.sessions)
        second = await client.ws_connect("/ws/lizard")  # the freed slot
        out["second"] = (await second.receive_json())["type"]
        await second.close()
        return out

    out = run_client(playground, scenario)
    assert out["hidden"] == []  # nothing computed while hidden
    assert out["closed"] in ("CLOSE", "CLOSED", "CLOSING")
    assert out["last_frame_after"] < 0.4 + 0.5  # stopped soon after idle_after
    assert 1.0 < out["closed_after"] < 2.5
    assert out["sessions"] == 0 and out["second"] == "hello"


def test_server_waits_briefly_for_a_leaving_tab(mnist_models, lizard_models):
    """Switching pages: the new page's socket may come just before the old one closes;
    it waits for the slot instead of getting "busy"."""
    from nca_adv.playground.server import Playground

    playground = Playground(mnist_models, lizard_models, max_sessions=1)

    async def scenario(client):
        old = await client.ws_connect("/ws/mnist")
        await _hello_and_frame(old)

        async def leave_later():
            await asyncio.sleep(0.3)
            await old.close()

        leaving = asyncio.create_task(leave_later())
        page = await client.get("/lizard")
        new = await client.ws_connect("/ws/lizard")
        first = await new.receive_json()
        await leaving
        await new.close()
        return page.status, first["type"]

    assert run_client(playground, scenario) == (200, "hello")


def test_server_shares_workers_fairly(mnist_models, lizard_models):
    """Four clients asking for the longest steps do not starve a fifth: its one-step
    actions wait for at most a chunk of the others' work, not for their whole requests."""
    from nca_adv.playground.server import Playground

    playground = Playground(mnist_models, lizard_models, max_sessions=5, workers=4)

    async def scenario(client):
        loop = asyncio.get_running_loop()
        small = await client.ws_connect("/ws/mnist")
        await _hello_and_frame(small)
        heavy = []
        for _ in range(4):
            ws = await client.ws_connect("/ws/lizard")
            await _hello_and_frame(ws)
            heavy.append(ws)
        for ws in heavy:  # warm: the programs are compiled
            await ws.send_str(json.dumps({"type": "step", "n": CHUNK_STEPS + 1}))
            await ws.receive_bytes()
        await small.send_str('{"type": "step", "n": 1}')
        await small.receive_bytes()

        async def long_request(ws):
            t0 = loop.time()
            await ws.send_str(json.dumps({"type": "step", "n": MAX_STEPS_PER_ACTION}))
            header = unpack_frame(await ws.receive_bytes())[0]
            return loop.time() - t0, header["step"]

        tasks = [asyncio.create_task(long_request(ws)) for ws in heavy]
        await asyncio.sleep(0.05)
        waits = []
        while not all(t.done() for t in tasks):
            t0 = loop.time()
            await small.send_str('{"type": "step", "n": 1}')
            await small.receive_bytes()
            waits.append(loop.time() - t0)
            await asyncio.sleep(0.02)
        long = [await t for t in tasks]
        for ws in (small, *heavy):
            await ws.close()
        return waits, long

    waits, long = run_client(playground, scenario)
    durations = sorted(d for d, _ in long)
    assert all(step == CHUNK_STEPS + 1 + MAX_STEPS_PER_ACTION for _, step in long)
    # Round robin: a one-step action waits for about one chunk of each other session, so
    # it is served again and again while they run (one whole request each: it would wait
    # for a whole request, and be served once or twice).
    assert len(waits) >= 5, (waits, durations)
    assert max(waits) < 0.5 * durations[len(durations) // 2], (waits, durations)


# ----------------------------------------------------------------------------- launch
RUNNER = r"""
import contextlib, io, json, sys
from absl import app, flags
from experiments import cli, playground
for argv in json.loads(sys.stdin.read()):
    flags.FLAGS.unparse_flags()
    app._register_and_parse_flags_with_usage.done = False
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.run(playground.main, ["playground", *argv])
            code = 0
        except SystemExit as e:
            code = e.code
    print("@@CASE " + json.dumps({"code": code, "stderr": err.getvalue()}), flush=True)
"""


def test_launch_start_up_errors(subprocess_env):
    """Unknown model, model of the wrong kind, port in use, bad matrices: one line, exit 2
    (all cases in one process: JAX is imported once)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    cases = [
        (["--port", str(port)], f"port {port} on 127.0.0.1 is in use"),
        (["--port=0", "--mnist_model=no_such_model"], "no_such_model"),
        (["--port=0", "--lizard_model=mnist"], "mnist"),
        (["--port=0", "--growing_adversary=mnist_adversary"], "mnist_adversary"),
        (["--port=0", "--perturbations=nope"], "nope"),
        (["--port=0", "--host=no.such.host.invalid"], "--host=no.such.host.invalid"),
    ]
    try:
        res = subprocess.run(
            [sys.executable, "-c", RUNNER],
            input=json.dumps([argv for argv, _ in cases]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=subprocess_env(optimise=False),
            timeout=600,
        )
    finally:
        taken.close()
    results = [
        json.loads(line[7:]) for line in res.stdout.splitlines() if line.startswith("@@CASE")
    ]
    assert len(results) == len(cases), res.stderr[-2000:]
    for (argv, expected), result in zip(cases, results):
        lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
        assert result["code"] == 2, (argv, result["stderr"][-1500:])
        assert lines[-1].startswith("error: ") and expected in lines[-1], (argv, lines[-1])
        assert "Traceback" not in result["stderr"], argv
