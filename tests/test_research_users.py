"""A researcher's rule (hidden 64, learned perception, fire rate 0.3) through every path:
save/load, the jobs and trainers, the launches and the evaluations keep its fire rate and
architecture; the jobs' fixed grow and a dying pattern are reported; the in-memory
training keeps the run placement. The last tests run the same tasks from an installed
wheel, outside the clone."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import nca_adv
from nca_adv import io
from nca_adv.models import architecture, growing
from nca_adv.training import jobs, trainers

ROOT = Path(__file__).resolve().parents[1]
KEY = jax.random.PRNGKey(0)
RULE = nca_adv.GrowingCA(hidden=64, perception="learned", perception_features=24, fire_rate=0.3)
TINY = growing.GrowingTrainConfig(
    pool_size=4, batch_size=2, min_steps=2, max_steps=3, damage_n=0, lr=1e-3
)


@pytest.fixture(scope="module")
def rule(tmp_path_factory) -> tuple[nca_adv.CA, Path]:
    """The rule with small random weights (so the fire rate shows in the states), saved."""
    params = RULE.init(KEY)
    k = jax.random.PRNGKey(1)
    params["dense2"]["kernel"] = 0.02 * jax.random.normal(k, params["dense2"]["kernel"].shape)
    ca = nca_adv.CA(RULE, params)
    path = tmp_path_factory.mktemp("rule") / "rule.npz"
    nca_adv.save_params(path, ca)
    return ca, path


@pytest.fixture(scope="module")
def lizard_03(tmp_path_factory) -> Path:
    """The shipped lizard's weights recorded at fire rate 0.3."""
    path = tmp_path_factory.mktemp("lizard03") / "lizard03.npz"
    nca_adv.save_params(
        path, nca_adv.CA(nca_adv.GrowingCA(fire_rate=0.3), io.load_model("lizard", "growing"))
    )
    return path


def test_save_load_keeps_the_rule(rule):
    ca, path = rule
    loaded = nca_adv.load_ca(str(path), "growing")
    assert loaded.model == RULE
    assert io.weights._params_kind(loaded.params) == "growing"


def test_adversary_job_runs_the_base_at_its_own_rate(lizard_03, tmp_path, caplog):
    job = jobs.growing_adversary_job(
        str(lizard_03), ["lizard_no_tail"], [0.2], [0], TINY, 0, grow_steps=10
    )
    base = job.shared["base"]
    assert isinstance(base, architecture.CA) and base.model.fire_rate == 0.3
    assert job.config["fire_rate"] == 0.3 and job.config["grow_steps"] == 10
    lizard = io.load_model("lizard", "growing")
    at_03 = trainers.grow(nca_adv.CA(nca_adv.GrowingCA(fire_rate=0.3), lizard), 40, 40, 10, KEY)
    at_05 = trainers.grow(lizard, 40, 40, 10, KEY)
    np.testing.assert_array_equal(job.shared["grown"], at_03)
    assert not np.array_equal(at_03, at_05)
    result = jobs.train_job(job, 1)
    (params,) = result.params.values()
    assert "alive" in next(iter(result.metrics.values()))
    saved = job.save(params, tmp_path)
    assert nca_adv.load_ca(str(saved), "growing").model.fire_rate == 0.3
    # the old call form: a config contradicting the base is dropped, with a warning
    with caplog.at_level(logging.WARNING):
        j2 = jobs.growing_adversary_job(
            str(lizard_03),
            ["lizard_no_tail"],
            [0.2],
            [0],
            TINY._replace(fire_rate=0.7),
            0,
            "fresh",
            grow_steps=10,
        )
    assert j2.config["fire_rate"] == 0.3 and "dropped" in caplog.text


def test_perturbation_job_and_a_bare_dict_base(lizard_03):
    job = jobs.perturbation_job(
        str(lizard_03), ["lizard_no_tail"], [0], TINY, 0, None, "adam", grow_steps=5
    )
    assert job.shared["base"].model.fire_rate == 0.3 and job.config["fire_rate"] == 0.3
    jobs.train_job(job, 1)
    with pytest.raises(ValueError, match="does not say its fire rate"):
        jobs.perturbation_job(io.load_model("lizard", "growing"), ["lizard"], [0], TINY, 0)


def test_a_rule_trained_in_a_workdir_reloads_at_its_rate(tmp_path):
    """Fire rate from the training config (default architecture, nothing recorded beside
    it) and from the model: load_ca(workdir) agrees with the run's params.npz."""
    cfg = TINY._replace(fire_rate=0.3)
    for name, model, config in (("cfg", None, cfg), ("model", RULE, TINY)):
        job = jobs.growing_job(["lizard"], [0], config, 0, model)
        assert job.config["fire_rate"] == 0.3
        jobs.run_job(job, tmp_path / name, 1, chunk=1, checkpoint_every=1)
        from_ckpt = nca_adv.load_ca(str(tmp_path / name / "checkpoints"), "growing")
        from_npz = nca_adv.load_ca(str(tmp_path / name / "params.npz"), "growing")
        assert from_ckpt.model == from_npz.model and from_npz.model.fire_rate == 0.3
        from nca_adv.io import export

        shipped = export.export_run(tmp_path / name, "growing", f"mine_{name}", tmp_path / "out")
        assert nca_adv.load_ca(shipped["weights"], "growing").model == from_npz.model


def test_an_unstable_or_dead_base_is_reported(tmp_path, caplog):
    model = nca_adv.GrowingCA(hidden=8)
    params = model.init(KEY)
    params["dense2"]["bias"] = params["dense2"]["bias"].at[3].set(-1.0)  # alpha falls: dies
    dead = tmp_path / "dead.npz"
    nca_adv.save_params(dead, nca_adv.CA(model, params))
    with caplog.at_level(logging.WARNING):
        job = jobs.growing_adversary_job(str(dead), ["lizard_no_tail"], [0.2], [0], TINY, 0)
    assert "dead" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = jobs.train_job(job, 1)
    assert next(iter(result.metrics.values()))["alive"][-1] == 0
    assert "no living cell" in caplog.text


def _launch(module: str, *args: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eval_growing_runs_a_new_architecture_at_its_rate(rule, tmp_path):
    ca, path = rule
    at_05 = tmp_path / "rule05.npz"
    nca_adv.save_params(
        at_05, ca.params, model=architecture.GrowingCA(**{**_fields(RULE), "fire_rate": 0.5})
    )
    args = ("--target=lizard", "--steps=6", "--padding=0", "--runs=1")
    a = _launch("nca_adv.experiments.eval_growing", f"--model={path}", *args)
    b = _launch("nca_adv.experiments.eval_growing", f"--model={at_05}", *args)
    assert a["fire_rate"] == 0.3 and a["architecture"]["perception"] == "learned"
    assert a["architecture"]["hidden"] == 64 and b["fire_rate"] == 0.5
    assert a["loss"] != b["loss"]


def test_mix_perturbations_runs_a_03_model_at_03(lizard_03):
    args = ("tail=0.5", "--steps=4", "--padding=0", "--runs=1", "--x0=seed")
    a = _launch("nca_adv.experiments.mix_perturbations", f"--model={lizard_03}", *args)
    b = _launch("nca_adv.experiments.mix_perturbations", "--model=lizard", *args)
    assert a["fire_rate"] == 0.3 and b["fire_rate"] == 0.5
    assert a["phases"] != b["phases"]


def test_train_growing_adversary_base_keeps_its_rate(lizard_03, tmp_path):
    out = _launch(
        "nca_adv.experiments.train_growing_adversary",
        f"--base={lizard_03}",
        f"--workdir={tmp_path / 'w'}",
        "--target=lizard_no_tail",
        "--iterations=1",
        "--pool_size=4",
        "--batch_size=2",
        "--min_steps=2",
        "--max_steps=3",
        "--damage_n=0",
        "--padding=0",
        "--grow_steps=5",
        "--checkpoint_every=1",
        "--chunk=1",
    )
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["fire_rate"] == 0.3 and config["grow_steps"] == 5
    assert nca_adv.load_ca(out["params"], "growing").model.fire_rate == 0.3
    assert nca_adv.load_ca(str(tmp_path / "w"), "growing").model.fire_rate == 0.3


def test_place_adversaries_runs_a_model_at_its_own_fire_rate(lizard_03, tmp_path):
    """The placement launch grows and attacks with the model's own rule: the 0.3 file's
    result records 0.3 and differs from the same weights at 0.5 (the shipped lizard)."""
    outs = {}
    for name, model in (("03", str(lizard_03)), ("05", "lizard")):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "nca_adv.experiments.place_adversaries",
                "--kind=growing",
                f"--model={model}",
                f"--adversary={model}",
                "--budget=0.05",
                "--target=lizard_no_tail",
                "--padding=0",
                "--grow_first=6",
                "--steps=3",
                "--opt_keys=1",
                "--eval_keys=2",
                "--iterations=1",
                "--rounds=1",
                "--start=random",
                "--lr=1",
                f"--out_dir={tmp_path / name}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        outs[name] = json.loads(res.stdout.strip().splitlines()[-1])
    assert outs["03"]["fire_rate"] == 0.3 and outs["05"]["fire_rate"] == 0.5
    assert outs["03"]["architecture"]["hidden"] == 128
    assert outs["03"]["random_loss"] != outs["05"]["random_loss"]


def test_the_playground_loads_a_03_model_at_03(lizard_03):
    from nca_adv.playground import models

    loaded = models.load_lizard_models(str(lizard_03))
    assert loaded.base.model.fire_rate == 0.3
    assert all(a.model.fire_rate == 0.3 for a in loaded.adversaries.values())
    assert architecture.bind(loaded.base, "growing").model.fire_rate == 0.3


def _fields(model) -> dict:
    d = architecture.to_dict(model)
    d.pop("kind")
    return d


def test_train_job_keeps_the_run_sharding():
    """Two runs on two host devices: one run on each (as run_job places them)."""
    code = """
import jax, numpy as np
from nca_adv.training import jobs, runtime
from nca_adv.models import growing
cfg = growing.GrowingTrainConfig(pool_size=4, batch_size=2, min_steps=1, max_steps=2, damage_n=0)
job = jobs.growing_job(["lizard"], [0, 1], cfg, 0)
mesh = runtime.data_mesh()
seen = []
real = jobs.engine.make_chunk
def spy(*a, **k):
    chunk = real(*a, **k)
    def call(states, shared, consts):
        seen.append({d.id for d in states["params"]["dense1"]["kernel"].sharding.device_set})
        seen.append(len(states["params"]["dense1"]["kernel"].addressable_shards))
        return chunk(states, shared, consts)
    return call
jobs.engine.make_chunk = spy
res = jobs.train_job(job, 1, mesh)
print(seen, sorted(res.params))
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[{0, 1}, 2]" in res.stdout, res.stdout


# ----------------------------------------------------------------------------- installed
INSTALLED_TASKS = r"""
import json, sys, warnings
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
import nca_adv
from nca_adv import io
from nca_adv.evaluation import adversary_eval, perturbation_eval
from nca_adv.training import jobs
from nca_adv.models import growing

work = Path(sys.argv[1])
assert "site-packages" in nca_adv.__file__, nca_adv.__file__
rule = nca_adv.GrowingCA(hidden=64, perception="learned", perception_features=24, fire_rate=0.3)
params = rule.init(jax.random.PRNGKey(0))
kernel = params["dense2"]["kernel"]  # small random weights: the fire rate shows in the states
params["dense2"]["kernel"] = 0.02 * jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
ca = nca_adv.CA(rule, params)
nca_adv.save_params(work / "rule.npz", ca)
back = nca_adv.load_ca(str(work / "rule.npz"), "growing")
assert back.model == rule, back.model

cfg = growing.GrowingTrainConfig(pool_size=4, batch_size=2, min_steps=2, max_steps=3, damage_n=0)
out = {}
adv_job = jobs.growing_adversary_job(str(work / "rule.npz"), ["lizard_no_tail"], [0.2], [0], cfg, 0, grow_steps=5)
assert adv_job.shared["base"].model == rule and adv_job.config["fire_rate"] == 0.3
summary = jobs.run_job(adv_job, work / "adv", 1, chunk=1, checkpoint_every=1)
adv = nca_adv.load_ca(str(work / "adv"), "growing")
assert adv.model == rule, adv.model  # the adversary: the base's architecture and rate
assert nca_adv.load_ca(str(work / "adv" / "params.npz"), "growing").model == rule
pert_job = jobs.perturbation_job(str(work / "rule.npz"), ["lizard_no_tail"], [0], cfg, 0, grow_steps=5)
assert pert_job.shared["base"].model == rule and pert_job.config["fire_rate"] == 0.3
jobs.run_job(pert_job, work / "pert", 1, chunk=1, checkpoint_every=1)
a = np.load(work / "pert" / "perturbation.npy")
assert a.shape == (16, 16)

target = io.targets.load_target("lizard_no_tail", padding=0)
key = jax.random.PRNGKey(0)
run = adversary_eval.growing_attack(back, adv, target, key, 2, 0.2, grow_first=3, steps=3)
assert np.isfinite(np.asarray(run.states)).all()
x0 = perturbation_eval.grow(back, 40, 40, jax.random.split(key, 2), 3)
phases = perturbation_eval.run_phases(back, a, x0, jax.random.split(key, 2), [(True, 0, 3)])
sw = perturbation_eval.sweep(back, a[None], x0, jax.random.split(key, 2), 3, target, target)
# the evaluations ran the rule at 0.3: the same as its own step, unlike the weights at 0.5
mine = jax.vmap(lambda x, k: nca_adv.rollout(back.step, x, k, 3))(jnp.asarray(x0), jax.random.split(key, 2))
np.testing.assert_allclose(sw["base"], mine, atol=1e-6)
at05 = nca_adv.CA(nca_adv.GrowingCA(hidden=64, perception="learned", perception_features=24), params)
g05 = perturbation_eval.grow(at05, 40, 40, jax.random.split(key, 2), 3)
g03 = perturbation_eval.grow(back, 40, 40, jax.random.split(key, 2), 3)
assert not np.array_equal(g05, g03)
print(json.dumps({"ok": True, "loss": summary["0"]["final_loss"] if "0" in summary else None}))
"""


def test_installed_wheel_rule_through_save_load_trainers_and_evaluations(installed_wheel, tmp_path):
    res = installed_wheel.run(INSTALLED_TASKS, str(tmp_path), timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["ok"]
    # the CLI evaluation of the installed package, on the rule saved above
    out = installed_wheel.command(
        "nca-adv",
        "eval_growing",
        f"--model={tmp_path / 'rule.npz'}",
        "--target=lizard",
        "--steps=4",
        "--padding=0",
        "--runs=1",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fire_rate"] == 0.3 and result["architecture"]["hidden"] == 64
    assert result["architecture"]["perception"] == "learned"
    # and the adversary against it, by the CLI (its workdir: the base's architecture)
    adv = installed_wheel.command(
        "nca-adv",
        "eval_growing",
        f"--model={tmp_path / 'rule.npz'}",
        "--target=lizard_no_tail",
        f"--adversary={tmp_path / 'adv'}",
        "--adversary_fraction=0.2",
        "--grow_first=3",
        "--steps=3",
        "--padding=0",
        "--runs=1",
        timeout=600,
    )
    assert adv.returncode == 0, adv.stderr[-3000:]
    assert json.loads(adv.stdout.strip().splitlines()[-1])["fire_rate"] == 0.3


def test_installed_wheel_sweep_on_two_host_devices(installed_wheel, tmp_path):
    code = r"""
import sys, json
from pathlib import Path
import jax
from nca_adv.training import jobs, runtime
from nca_adv.models import growing
import nca_adv
assert "site-packages" in nca_adv.__file__
assert jax.device_count() == 2, jax.devices()
cfg = growing.GrowingTrainConfig(pool_size=4, batch_size=2, min_steps=1, max_steps=2, damage_n=0)
job = jobs.growing_job(["lizard"], [0, 1], cfg, 0)
mesh = runtime.data_mesh()
placed = []
real = jobs.engine.make_chunk
def spy(*a, **k):
    chunk = real(*a, **k)
    def call(states, shared, consts):
        leaf = states["params"]["dense1"]["kernel"]
        placed.extend(sorted((s.device.id, s.index[0].start or 0) for s in leaf.addressable_shards))
        return chunk(states, shared, consts)
    return call
jobs.engine.make_chunk = spy
jobs.train_job(job, 1, mesh)
print(json.dumps(placed))
"""
    res = installed_wheel.run(
        code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    placed = json.loads(res.stdout.strip().splitlines()[-1])
    assert placed == [[0, 0], [1, 1]], placed  # run 0 on device 0, run 1 on device 1
