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
from nca_adv.playground.sessions import LizardSession, MnistSession, unpack_frame

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
    ('{"type": "step", "n": 0}', "integer in [1, 1000]"),
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
