"""Target-set selection (nca_adv.attacks.placement): the relaxed step, the budget set, the
optimisers on toy objectives, held-out keys, budget errors, and the launch end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_adv.attacks import adversaries
from nca_adv.attacks import placement as P
from nca_adv.errors import UserError
from nca_adv.models import growing, mnist


def _eligible(b=3, h=6, w=7, seed=0):
    rng = np.random.default_rng(seed)
    e = (rng.uniform(size=(b, h, w, 1)) < 0.6).astype(np.float32)
    e[:, 0, 0] = 1.0  # at least one eligible cell each
    return jnp.asarray(e)


# ----------------------------------------------------------------------------- relaxed step
def test_relaxed_step_equals_discrete_at_0_and_1():
    base = growing.init_growing_params(jax.random.PRNGKey(0))
    adv = growing.init_growing_params(jax.random.PRNGKey(1))
    # the last kernel starts at zero: give both models a real update
    base["dense2"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (128, 16))
    adv["dense2"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(3), (128, 16))
    x = jax.random.uniform(jax.random.PRNGKey(4), (2, 9, 9, 16))
    mask = (jax.random.uniform(jax.random.PRNGKey(5), (2, 9, 9, 1)) < 0.4).astype(jnp.float32)

    def step(p):
        return lambda x, k: growing.growing_step(p, x, k)

    key = jax.random.PRNGKey(6)
    want = adversaries.with_adversaries(step(adv), mask)(step(base))(x, key)
    got = P.relaxed_adversaries(step(adv), mask)(step(base))(x, key)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(want), np.asarray(step(base)(x, key)))


def test_growing_placement_runs_any_growing_ca_at_its_own_fire_rate():
    """A base of another architecture and fire rate (hidden 32, rate 0.3) grows and attacks
    with its own step: grow_lizards equals that CA's rollout, not the same weights at 0.5."""
    from nca_adv.models import architecture
    from nca_adv.models.rollout import scan_steps

    model = architecture.GrowingCA(hidden=32, fire_rate=0.3)
    params = model.init(jax.random.PRNGKey(0))
    params["dense2"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (32, 16))
    base = architecture.CA(model, params)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    grown = P.grow_lizards(base, 12, 12, keys, 6)
    k_grow = jax.random.split(keys[1], 3)[0]
    want = scan_steps(model.step(params), growing.seed_state(12, 12), k_grow, 6)
    np.testing.assert_allclose(np.asarray(grown[1]), np.asarray(want), atol=1e-6)
    at_half = architecture.CA(architecture.GrowingCA(hidden=32), params)
    assert not np.allclose(np.asarray(P.grow_lizards(at_half, 12, 12, keys, 6)), grown)
    masks = jnp.zeros((1, 12, 12, 1)).at[0, 6, 6, 0].set(1.0)
    finals = P.growing_finals(base, base, grown, masks, keys, 3)
    assert finals.shape == (2, 1, 12, 12, 16)


def _mnist_pair():
    base = mnist.init_mnist_params(jax.random.PRNGKey(0))
    adv = mnist.init_mnist_params(jax.random.PRNGKey(1))
    base["dense2"]["kernel"] = 0.05 * jax.random.normal(jax.random.PRNGKey(2), (80, 19))
    adv["dense2"]["kernel"] = 0.05 * jax.random.normal(jax.random.PRNGKey(3), (80, 19))
    return base, adv


def test_mnist_relaxed_step_equals_sparse_discrete_step_at_0_and_1():
    base, adv = _mnist_pair()
    image = jnp.zeros((10, 10)).at[2:8, 3:7].set(0.8)
    slots = P.digit_cells(image, 32)
    x = mnist.seed_states(image).at[..., 1:].set(0.3)
    x = x * (image > 0.1)[..., None]
    m = jnp.zeros((32, 1)).at[jnp.array([0, 5, 9])].set(1.0) * slots.valid
    key = jax.random.PRNGKey(7)
    relaxed = P.mnist_mixed_digit_step(base, adv, x, slots, key, m)
    sparse = P.mnist_mixed_digit_step(base, adv, x, slots, key, m, jnp.array([0, 5, 9, 20]))
    np.testing.assert_allclose(np.asarray(relaxed), np.asarray(sparse), rtol=0, atol=1e-6)
    only_base = P.mnist_mixed_digit_step(base, adv, x, slots, key, jnp.zeros((32, 1)))
    assert not np.allclose(np.asarray(relaxed), np.asarray(only_base))
    # the adversary changes its own cells only: elsewhere the base's update
    changed = np.abs(np.asarray(relaxed - only_base)).sum(-1) > 0
    chosen = np.zeros(100, bool)
    chosen[np.asarray(slots.cells)[[0, 5, 9]]] = True
    assert not changed.reshape(-1)[~chosen].any()


# ----------------------------------------------------------------------------- budget set
def test_projection_and_top_k_stay_in_budget_and_on_eligible_cells():
    e = _eligible()
    v = jax.random.normal(jax.random.PRNGKey(0), e.shape) * 2
    for k in (1, 3, 7):
        m = np.asarray(P.project_budget(v, e, k))
        assert m.min() >= 0 and m.max() <= 1
        np.testing.assert_allclose(m.sum((1, 2, 3)), k, atol=1e-4)
        assert not m[np.asarray(e) == 0].any()
        top = np.asarray(P.top_k_mask(jnp.asarray(m), e, k))
        np.testing.assert_array_equal(top.sum((1, 2, 3)), k)
        assert not top[np.asarray(e) == 0].any()
        rnd = np.asarray(P.random_masks(jax.random.PRNGKey(k), e, k))
        np.testing.assert_array_equal(rnd.sum((1, 2, 3)), k)
        assert not rnd[np.asarray(e) == 0].any()


def _linear_objective(weights):
    """Toy objective: loss = -sum(m * w) per problem; the best k cells are the k largest w."""
    return lambda m: -(m * weights).sum((1, 2, 3))


def test_relaxed_optimiser_moves_a_toy_placement_the_right_way():
    e = _eligible()
    w = jax.random.uniform(jax.random.PRNGKey(1), e.shape)
    k = 3
    relaxation = P.optimise_relaxed(_linear_objective(w), e, k, iterations=30, lr=0.1)
    losses = np.asarray(relaxation.losses)
    assert (losses[-1] < losses[0]).all()
    got = np.asarray(P.top_k_mask(relaxation.m, e, k))
    want = np.asarray(P.top_k_mask(w, e, k))
    np.testing.assert_array_equal(got, want)


def test_greedy_swaps_improve_and_keep_budget():
    e = _eligible()
    w = jax.random.uniform(jax.random.PRNGKey(2), e.shape)
    k = 2
    objective = _linear_objective(w)
    start = P.random_masks(jax.random.PRNGKey(3), e, k)
    refined = P.greedy_swaps(objective, start, e, jax.random.PRNGKey(4), rounds=30)
    masks = np.asarray(refined.masks)
    np.testing.assert_array_equal(masks.sum((1, 2, 3)), k)
    assert not masks[np.asarray(e) == 0].any()
    before, after = np.asarray(objective(start)), np.asarray(refined.loss)
    assert (after < before).all() and (np.asarray(refined.kept) > 0).all()
    np.testing.assert_allclose(after, objective(refined.masks), rtol=1e-6)
    best = np.asarray(objective(P.top_k_mask(w, e, k)))
    assert (after - best < 0.5 * (before - best)).all()  # more than half-way to the optimum


def _deceptive_objective(weights, eligible):
    """Toy objective whose relaxation points the wrong way: the loss of a placement is
    ``-sum(m * w)`` plus a penalty for every pair of chosen cells in one row, so the relaxed
    top k (the largest w, packed into the rows of large w) is worse than spread placements."""

    def loss(m):
        rows = m.sum(axis=2)  # (B, H, 1): chosen cells per row
        return -(m * weights).sum((1, 2, 3)) + 3.0 * (rows * (rows - 1)).sum((1, 2))

    return loss


def _row_heavy(shape):
    """Weights that are large on the first row only, so the relaxed top k crowds it."""
    return jnp.zeros(shape).at[:, 0].set(1.0) + 0.01 * jax.random.uniform(
        jax.random.PRNGKey(9), shape
    )


@pytest.mark.parametrize("rounds", [0, 5])
def test_placement_is_never_worse_than_its_best_random_start(rounds):
    e = jnp.ones((4, 5, 6, 1))
    k = 3
    objective = _deceptive_objective(_row_heavy(e.shape), e)
    key = jax.random.PRNGKey(5)
    found = P.optimise_placement(
        objective, objective, e, k, key, iterations=3, rounds=rounds, random_starts=6, lr=0.5
    )
    masks = np.asarray(found.masks)
    np.testing.assert_array_equal(masks.sum((1, 2, 3)), k)
    # the same random starts, drawn again from the documented key: none beats the result
    k_starts = jax.random.fold_in(key, 1)
    random_loss = np.stack(
        [
            np.asarray(objective(P.random_masks(jax.random.fold_in(k_starts, s), e, k)))
            for s in range(6)
        ]
    )
    np.testing.assert_allclose(np.asarray(found.best_random_loss), random_loss.min(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(found.loss), np.asarray(objective(found.masks)))
    assert (np.asarray(found.loss) <= random_loss.min(0)).all()
    assert (np.asarray(found.loss) <= np.asarray(found.start_loss).min(0)).all()
    # here the relaxed top k crowds the heavy row: a random start won somewhere
    assert (np.asarray(found.start_loss)[0] > random_loss.min(0)).any()
    assert (np.asarray(found.source) > 0).any()


def test_best_start_picks_the_lowest_loss_per_problem_and_skips_nan():
    e = jnp.ones((3, 4, 4, 1))
    # candidate c takes cell c for every problem (distinct masks: the lookup below is exact)
    cands = jnp.broadcast_to(jnp.eye(16)[:4].reshape(4, 1, 4, 4, 1), (4, *e.shape))
    table = jnp.array([[3.0, 1.0, jnp.nan], [2.0, 5.0, 9.0], [1.0, 1.0, 4.0], [4.0, 0.5, 8.0]])

    def objective(m):  # loss of candidate c for problem b, looked up by the mask
        hit = (cands == m[None]).all((2, 3, 4))  # (C, B)
        return (jnp.where(hit, table, 0.0)).sum(0)

    masks, losses = P.best_start(objective, cands)
    np.testing.assert_array_equal(np.asarray(losses), np.asarray(table))
    for b, c in enumerate([2, 3, 2]):  # problem 2: the NaN never wins
        np.testing.assert_array_equal(np.asarray(masks[b]), np.asarray(cands[c, b]))


def test_mnist_placement_is_never_worse_than_its_best_random_start():
    """The real MNIST objective (a random-weight pair, two small digits, a few steps)."""
    base, adv = _mnist_pair()
    images = jnp.zeros((2, 10, 10)).at[0, 2:8, 3:7].set(0.8).at[1, 1:9, 4:6].set(0.6)
    eligible = P.mnist_eligible(images)
    slots, k, ids = 48, 2, jnp.arange(2)
    opt_keys, _ = P.split_keys(jax.random.PRNGKey(0), 2, 1)

    def objective(adv_cells):
        return P.mnist_objective(base, adv, images, ids, opt_keys, 3, slots, adv_cells, target=8)

    key = jax.random.PRNGKey(3)
    found = P.optimise_placement(
        objective(None), objective(k), eligible, k, key, iterations=1, rounds=3, random_starts=4
    )
    masks = np.asarray(found.masks)
    np.testing.assert_array_equal(masks.sum((1, 2, 3)), k)
    assert not masks[np.asarray(eligible) == 0].any()
    k_starts = jax.random.fold_in(key, 1)
    random_loss = np.stack(
        [
            np.asarray(
                P.mnist_rollouts(
                    base,
                    adv,
                    images,
                    P.random_masks(jax.random.fold_in(k_starts, s), eligible, k),
                    opt_keys,
                    ids,
                    3,
                    slots,
                    k,
                )[0].mean(0)
            )
            for s in range(4)
        ]
    )
    assert (np.asarray(found.loss) <= random_loss.min(0) + 1e-7).all()


def test_placement_refuses_negative_random_starts():
    e = jnp.ones((1, 3, 3, 1))
    with pytest.raises(UserError, match="random_starts"):
        P.optimise_placement(
            None,
            lambda m: m.sum((1, 2, 3)),
            e,
            1,
            jax.random.PRNGKey(0),
            iterations=0,
            rounds=0,
            random_starts=-1,
        )


# ----------------------------------------------------------------------------- keys, budgets
def test_held_out_keys_never_reuse_an_optimisation_key():
    opt, held = P.split_keys(jax.random.PRNGKey(0), 3, 6)
    P.check_held_out(opt, held)
    a = np.asarray(jax.random.key_data(opt)).reshape(3, -1)
    b = np.asarray(jax.random.key_data(held)).reshape(6, -1)
    assert not (a[:, None] == b[None]).all(-1).any()
    with pytest.raises(ValueError, match="held-out key"):
        P.check_held_out(opt, jnp.concatenate([held, opt[1:2]]))


@pytest.mark.parametrize(
    "budget, match",
    [
        (0, "must be > 0"),
        (-2, "must be > 0"),
        ("nan", "must be > 0"),
        (2.5, "whole number"),
        (785, "more than the grid"),
        (50, "eligible"),
    ],
)
def test_bad_budgets_are_one_line_errors(budget, match):
    with pytest.raises(UserError, match=match) as e:
        P.budget_cells(budget, 784, 40)
    assert "\n" not in str(e.value)


def test_budget_shares_and_counts():
    assert P.budget_cells(0.01, 784) == 8
    assert P.budget_cells(0.001, 784) == 1
    assert P.budget_cells(4, 784) == 4
    assert P.budget_cells("0.1", 444, 444) == 44


@pytest.mark.parametrize("budget", ["0", "100000"])
def test_launch_refuses_bad_budgets(budget, subprocess_env):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.place_adversaries", f"--budget={budget}"],
        capture_output=True,
        text=True,
        env=subprocess_env(optimise=False),
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "budget" in lines[0], out.stderr


def test_launch_mnist_tiny(tmp_path, subprocess_env):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.place_adversaries",
            "--kind=mnist",
            "--budget=2,0.01",
            "--num_digits=3",
            "--steps=4",
            "--iterations=1",
            "--rounds=1",
            "--random_draws=2",
            f"--out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(optimise=False),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("cells_voting_target", "digits_hijacked"):
        assert 0 <= result[name] <= 1
        assert 0 <= result[f"random_{name}"] <= 1
    assert [r["cells"] for r in result["by_budget"]] == [2, 8]
    assert "random_live_cells_voting_target" in result["by_budget"][1]
    saved = np.load(tmp_path / "placement_mnist.npz")
    assert (saved["masks_2"].sum((1, 2, 3)) == 2).all()
    assert (tmp_path / "placement_mnist_8cells.png").is_file()


def test_report_part_reads_shipped_placements(tmp_path, monkeypatch):
    from experiments import report_beyond
    from nca_adv.media import report

    row = {
        "budget": 0.01,
        "cells": 8,
        "cells_voting_target": 0.99,
        "digits_hijacked": 1.0,
        "random_cells_voting_target": 0.4,
        "random_digits_hijacked": 0.38,
        "random_live_cells_voting_target": 0.9,
        "random_live_digits_hijacked": 0.95,
    }
    behind = {
        "budget": 4.0,
        "cells": 4,
        "cells_voting_target": 0.8,
        "digits_hijacked": 0.9,
        "start_cells_voting_target": 0.85,
        "start_digits_hijacked": 0.9,
        "random_cells_voting_target": 0.82,
        "random_digits_hijacked": 0.95,
        "random_starts": 8,
        "opt_loss": 0.1,
        "start_opt_loss": 0.12,
        "best_random_start_opt_loss": 0.12,
        "relaxed_start_opt_loss": 0.3,
        "share_started_from_relaxed": 0.0,
    }
    mnist_run = {
        "opt_keys": 2,
        "rounds": 8,
        "num_digits": 3,
        "steps": 200,
        "eval_keys": 1,
        "random_draws": 8,
        "by_budget": [behind, row],
        "fewest_cells_hijacking_half_the_digits": 8,
    }
    growing_run = {
        "model": "lizard",
        "cells": 44,
        "eligible_cells": 444,
        "budget": 0.1,
        "grow_first": 200,
        "padding": 24,
        "steps": 500,
        "eval_keys": 6,
        "loss": 0.001,
        "loss_per_run": [0.001],
        "random_loss": 0.003,
        "random_loss_per_run": [0.003],
    }
    (tmp_path / "placement_mnist_shipped.json").write_text(json.dumps(mnist_run))
    (tmp_path / "placement_growing_authors.json").write_text(json.dumps(growing_run))
    monkeypatch.setattr(report_beyond, "RESULTS", tmp_path)
    rep = report.HtmlReport(tmp_path / "out" / "report.html", "t")
    got = report_beyond.placement_part(rep, tmp_path / "out", None, jax.random.PRNGKey(0))
    assert got["placement_shipped_0.01_cells_voting_target"] == 0.99
    assert got["placement_growing_authors_loss"] == 0.001
    html = rep.write().read_text()
    assert "best k cells" in html
    # a budget where random placements win on held-out keys is said, with the reason
    assert "behind at k = 4 (2.0 points)" in html and "best random start" in html
    assert "swaps lost a little on held-out keys at k = 4 (5.0 points)" in html
    # an old file without the start fields still renders
    (tmp_path / "placement_mnist_shipped.json").write_text(
        json.dumps(
            {k: v for k, v in mnist_run.items() if k not in ("opt_keys", "rounds")}
            | {"by_budget": [row]}
        )
    )
    rep2 = report.HtmlReport(tmp_path / "out2" / "report.html", "t")
    report_beyond.placement_part(rep2, tmp_path / "out2", None, jax.random.PRNGKey(0))
    assert "at least as good" in rep2.write().read_text()


def test_launch_growing_tiny(tmp_path, subprocess_env):
    # the lizard as its own adversary: any growing CA of the same architecture will do
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.place_adversaries",
            "--kind=growing",
            "--model=lizard",
            "--adversary=lizard",
            "--budget=0.05",
            "--target=lizard_no_tail",
            "--padding=0",
            "--grow_first=3",
            "--steps=3",
            "--opt_keys=1",
            "--eval_keys=2",
            "--iterations=1",
            "--rounds=1",
            "--start=random",
            "--lr=1",
            f"--out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(optimise=False),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cells"] >= 1 and len(result["loss_per_run"]) == 2
    assert np.isfinite(result["loss"]) and np.isfinite(result["random_loss"])
    mask = np.load(tmp_path / "placement_growing.npz")["mask"]
    assert mask.sum() == result["cells"]
    assert (tmp_path / "placement_growing.png").is_file()
