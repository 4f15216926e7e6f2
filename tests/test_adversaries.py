"""Adversarial cells: the mixed step, the masks, model pairing, the evaluations, and the
authors' adversaries measured on a few digits / runs (the yardstick, loose bounds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data, targets
from nca_adv.media import adversary_pictures, video
from nca_adv.models import growing, mnist
from tests.test_experiments import launch


def _perturbed(params, key, scale=0.05):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [a + scale * jax.random.normal(k, np.shape(a)) for a, k in zip(leaves, keys)]
    )


@pytest.fixture(scope="module")
def lizards():
    base = io.load_model("lizard", "growing")
    grown = growing.rollout(base, growing.seed_state(24, 24), jax.random.PRNGKey(0), 30)
    return base, _perturbed(base, jax.random.PRNGKey(1)), jnp.stack([grown, grown])


@pytest.fixture(scope="module")
def digits():
    splits = data.load_mnist()
    return data.to_float(splits.test_images[:40]), splits.test_labels[:40].astype(np.int32)


def _bits_equal(a, b):
    return np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


# ----------------------------------------------------------------------------- mixed step
def test_growing_mixed_step_identities(lizards):
    base, adv, x = lizards
    step = jax.jit(lambda params, x, k: growing.growing_step(params, x, k))

    @jax.jit
    def mixed(mask, x, k):
        adv_step = lambda x, k: growing.growing_step(adv, x, k)  # noqa: E731
        base_step = lambda x, k: growing.growing_step(base, x, k)  # noqa: E731
        return adversaries.with_adversaries(adv_step, mask)(base_step)(x, k)

    key = jax.random.PRNGKey(5)
    for value, params in ((0.0, base), (1.0, adv)):
        assert _bits_equal(mixed(jnp.full((2, 24, 24, 1), value), x, key), step(params, x, key))
    # a real mix differs from both, and each cell is one of the two
    mask = adversaries.mnist_adversary_masks(jax.random.PRNGKey(2), (2, 24, 24), 0.5)
    out, b, a = mixed(mask, x, key), step(base, x, key), step(adv, x, key)
    assert not np.allclose(out, b) and not np.allclose(out, a)
    np.testing.assert_array_equal(out, np.where(mask > 0, a, b))


def test_mnist_mixed_step_identities(digits):
    images = digits[0][:4]
    base = io.load_model("mnist", "mnist")
    adv = _perturbed(base, jax.random.PRNGKey(3))
    index = mnist.cell_index(images, mnist.cells_needed(images))
    x = mnist.seed_states(images)  # a non-trivial state: hidden and class channels set
    x = x.at[..., 1:].set(
        jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 19)) * mnist.alive(x)
    )
    step = jax.jit(lambda params, x, k: mnist.mnist_step_cells(params, x, index, k))

    @jax.jit
    def mixed(mask, x, k):  # one compilation for every mask
        adv_step = lambda x, k: mnist.mnist_step_cells(adv, x, index, k)  # noqa: E731
        base_step = lambda x, k: mnist.mnist_step_cells(base, x, index, k)  # noqa: E731
        return adversaries.with_adversaries(adv_step, mask)(base_step)(x, k)

    key = jax.random.PRNGKey(7)
    for value, params in ((0, base), (1, adv)):
        assert _bits_equal(mixed(jnp.full((4, 28, 28, 1), value), x, key), step(params, x, key))
    assert not np.allclose(step(base, x, key), step(adv, x, key))


def test_mixed_step_bad_mask(lizards):
    base, adv, x = lizards
    step = lambda x, k: growing.growing_step(base, x, k)  # noqa: E731
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 1\)"):
        adversaries.with_adversaries(step, jnp.ones((24, 24)))
    bad = adversaries.with_adversaries(step, jnp.ones((2, 20, 20, 1)))(step)
    with pytest.raises(ValueError, match="does not broadcast"):
        bad(x, jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- masks
def test_growing_masks_respect_the_target():
    target = targets.load_target("lizard")
    tailless = target.copy()
    tailless[:, 36:] = 0  # erase the right half: no adversary may sit there
    alpha_on = tailless[..., 3] >= 0.1
    masks = np.asarray(
        adversaries.growing_adversary_masks(jax.random.PRNGKey(0), 64, tailless, 0.3)
    )
    assert masks.shape == (64, 72, 72, 1)
    assert not masks[..., 0][:, ~alpha_on].any()
    share = masks[..., 0][:, alpha_on].mean()
    assert 0.27 < share < 0.33
    full = adversaries.growing_adversary_masks(jax.random.PRNGKey(1), 2, tailless[..., 3], 1.0)
    np.testing.assert_array_equal(np.asarray(full)[..., 0], np.broadcast_to(alpha_on, (2, 72, 72)))
    assert not np.asarray(
        adversaries.growing_adversary_masks(jax.random.PRNGKey(1), 2, tailless, 0.0)
    ).any()


def test_mnist_masks_cover_the_grid_and_redraw_onto_the_digit(digits):
    m = np.asarray(adversaries.mnist_adversary_masks(jax.random.PRNGKey(0), (50, 28, 28), 0.1))
    assert m.shape == (50, 28, 28, 1) and 0.08 < m.mean() < 0.12
    assert m[:, :3, :3].any()  # the background too, not only digits
    image = digits[0][0]
    live = image > 0.1
    redraw = jax.jit(jax.vmap(lambda k: adversaries.mnist_live_mask(k, image, 0.01)))
    masks = np.asarray(redraw(jax.random.split(jax.random.PRNGKey(0), 50)))[..., 0] > 0
    assert masks[:, live].any(axis=1).all()
    assert masks.sum(axis=(1, 2)).mean() < 0.03 * 784  # still about 1 %, not forced up


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_masks_reject_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        adversaries.mnist_adversary_masks(jax.random.PRNGKey(0), (2, 28, 28), p)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        adversaries.growing_adversary_masks(jax.random.PRNGKey(0), 2, np.ones((8, 8, 4)), p)


def test_mnist_frames_mark_adversaries_and_wrong_majorities():
    images = np.zeros((2, 28, 28), np.float32)
    images[:, 5:20, 5:20] = 1.0  # two square "digits"
    votes = np.zeros((2, 2, 28, 28), np.int8)
    votes[:, 0] = 8  # digit 0 votes 8, digit 1 votes 0
    masks = np.zeros((2, 28, 28, 1))
    masks[0, 10, 10] = 1
    frames = adversary_pictures.mnist_frames(
        votes, images, np.array([3, 0]), masks, np.array([True, False]), zoom=2, cols=2
    )
    assert frames.shape[0] == 2 and frames.dtype == np.uint8
    magenta = np.all(frames == video.MARK_COLOUR, axis=-1)
    assert magenta[0].any() and not magenta[1].any()  # marked only while present
    assert np.all(frames[0, 2, 2] == video.WRONG_BACKGROUND)  # digit 0 is no 8
    assert np.all(frames[0, 2, -3] == video.RIGHT_BACKGROUND)  # digit 1 is a 0


def test_masks_reject_bad_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        adversaries.mnist_adversary_masks(jax.random.PRNGKey(0), (28,), 0.1)
    with pytest.raises(ValueError, match="RGBA or its alpha"):
        adversaries.growing_adversary_masks(jax.random.PRNGKey(0), 2, np.ones((8, 8, 8, 4)), 0.1)


# ----------------------------------------------------------------------------- models
def test_incompatible_models_are_refused(tmp_path):
    lizard, digits_model = io.load_model("lizard", "growing"), io.load_model("mnist", "mnist")
    adversaries.check_compatible(lizard, _perturbed(lizard, jax.random.PRNGKey(0)))
    assert adversaries.model_kind(lizard) == "growing"
    assert adversaries.model_kind(digits_model) == "mnist"
    with pytest.raises(ValueError, match="adversary is a mnist model but the base is a growing"):
        adversaries.check_compatible(lizard, digits_model)
    wider = jax.tree.map(lambda a: a, lizard)
    wider["dense1"] = {"kernel": np.zeros((48, 64)), "bias": np.zeros(64)}
    with pytest.raises(ValueError, match="adversary is a unknown model"):
        adversaries.check_compatible(lizard, wider)
    with pytest.raises(ValueError, match="not a usable growing model"):
        adversaries.load_adversary("mnist", "growing", lizard)


# ----------------------------------------------------------------------------- evaluations
def test_mnist_evaluations_agree(digits):
    """The curve (one batch) equals the evaluation (batches of 3 sorted by size): a digit's
    result does not depend on its batch mates; p = 0 is the base rollout."""
    images, labels = digits[0][:5], digits[1][:5]
    base = io.load_model("mnist", "mnist")
    adv = _perturbed(base, jax.random.PRNGKey(3), 0.3)
    key, ps, k = jax.random.PRNGKey(4), jnp.array([0.0, 0.3, 1.0]), mnist.cells_needed(images)
    share = adversary_eval.mnist_success_curve(base, adv, images, key[None], ps, 4, k)
    lanes = adversary_eval.mnist_attack_lanes(  # the curve's program (same shapes)
        base, adv, images, jnp.stack([key] * 3), ps, jnp.zeros(3, bool), 4, k
    )
    counts = {
        p: adversary_eval.mnist_attack(base, adv, images, key, p, 4, batch_size=3)
        for p in (0.0, 0.3)
    }
    for j, p in enumerate((0.0, 0.3)):
        np.testing.assert_array_equal(lanes[j], counts[p][-1])
        np.testing.assert_allclose(share[j, 0], lanes[j][:, 8].sum() / lanes[j].sum(), rtol=1e-6)
    assert not np.array_equal(counts[0.0], counts[0.3]) and share[2, 0] > share[0, 0]
    k_run, _ = jax.random.split(key)  # p = 0: mnist.swap_rollout's base rollout
    stats = mnist.swap_rollout(base, images, labels, np.arange(5), k_run, 4, k)
    np.testing.assert_array_equal(counts[0.0].sum(-1), stats.alive)
    np.testing.assert_array_equal(counts[0.0][:, np.arange(5), labels], stats.correct)
    with pytest.raises(ValueError, match="remove_at"):
        adversary_eval.mnist_attack(base, adv, images, key, 0.5, 6, 2, 9)


def test_growing_curve_matches_the_evaluation(lizards):
    base, adv, _ = lizards
    target = jnp.asarray(targets.load_target("lizard", size=16, padding=4))
    key, ps = jax.random.PRNGKey(4), jnp.array([0.0, 0.3, 1.0])
    curve = adversary_eval.growing_success_curve(
        base, adv, target, jax.random.split(key, 2), ps, grow_first=10, steps=5
    )
    assert curve.shape == (3, 2)
    for j, p in enumerate([0.0, 0.3, 1.0]):
        run = adversary_eval.growing_attack(base, adv, target, key, 2, p, 10, 5)
        np.testing.assert_allclose(curve[j], growing.growing_loss(run.states, target), rtol=1e-5)
    assert curve[0, 0] != curve[2, 0]
    # the report's jobs program: the same runs, and its recorded frames end on the final state
    advs = jax.tree.map(lambda a: jnp.stack([a, a]), adv)
    final, masks, frames = adversary_eval.growing_attack_jobs(
        base,
        advs,
        jnp.stack([target[..., 3]] * 2),
        jnp.full(2, 0.3),
        jax.random.split(key, 2),
        10,
        5,
        5,
    )
    run = adversary_eval.growing_attack(base, adv, target, key, 2, 0.3, 10, 5)
    np.testing.assert_allclose(final, run.states, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(masks, run.masks)
    assert frames.shape == (1, 2, 24, 24, 4)
    np.testing.assert_array_equal(frames[-1], final[..., :4])


def test_mnist_attack_metrics_by_hand():
    counts = np.zeros((1, 3, 10), int)
    counts[0, 0, [1, 8]] = [2, 5]  # a 1 hijacked
    counts[0, 1, [3, 8]] = [6, 1]  # a 3 holding
    counts[0, 2, 8] = 9  # an 8: not counted
    m = adversary_eval.mnist_attack_metrics(counts, np.array([1, 3, 8]), 1)
    assert m == {"cells_voting_target": 6 / 14, "digits_hijacked": 0.5, "digits_correct": 0.5}


# ----------------------------------------------------------------------------- yardstick
def test_yardstick_mnist_authors_adversary(reference, digits):
    """10 % of the authors' adversary: 97.2 % of cells vote 8 at step 200 (300 digits)."""
    r = reference / "original"
    base = io.load_model(str(r / "mnist_base_model.json"), "mnist")
    adv = adversaries.load_adversary(str(r / "mnist_adversary_model.json"), "mnist", base)
    images, labels = digits
    images, labels = images[labels != 8][:8], labels[labels != 8][:8]
    counts = adversary_eval.mnist_attack(base, adv, images, jax.random.PRNGKey(0), 0.1, 200)
    m = adversary_eval.mnist_attack_metrics(counts, labels, 200)
    assert m["cells_voting_target"] > 0.9 and m["digits_hijacked"] > 0.9
    base_alone = adversary_eval.mnist_attack_metrics(counts, labels, 1)  # after one step
    assert base_alone["cells_voting_target"] < 0.5


def test_yardstick_growing_red_60(reference):
    """Red at 60 %: 0.00264 [0.00230-0.00288] to the red lizard, 0.00676 to the complete
    one (the base alone: 0.00782 to the red one); one run, loose bounds."""
    r = reference / "original"
    base = io.load_model(str(r / "growing_lizard_base_model.json"), "growing")
    adv = adversaries.load_adversary(str(r / "red_model_60perc.json"), "growing", base)
    red = targets.load_target(str(reference / "targets" / "lizard_red.png"), padding=24)
    complete = targets.load_target(str(reference / "targets" / "lizard_complete.png"), padding=24)
    run = adversary_eval.growing_attack(base, adv, red, jax.random.PRNGKey(0), 1, 0.6)
    red_loss = np.asarray(growing.growing_loss(run.states, red))
    assert np.all((0.0015 < red_loss) & (red_loss < 0.0045)), red_loss
    assert np.all(np.asarray(growing.growing_loss(run.states, complete)) > 0.005)


# ----------------------------------------------------------------------------- launches
def test_eval_growing_adversary_flags(tmp_path):
    out = launch(
        "experiments.eval_growing",
        "--model=lizard",
        "--adversary=lizard",
        "--adversary_fraction=0.5",
        "--target=lizard",
        "--original_target=lizard",
        "--padding=4",
        "--grow_first=8",
        "--steps=4",
        "--runs=2",
        f"--video={tmp_path / 'g.gif'}",
    )
    assert len(out["loss_per_run"]) == 2 and len(out["loss_original_per_run"]) == 2
    assert out["loss"] == out["loss_original"] > 0
    assert all(n > 0 for n in out["adversary_cells_per_run"])
    assert (tmp_path / "g.gif").stat().st_size > 1000


def test_eval_mnist_adversary_flags():
    args = ["--model=mnist", "--num_digits=12", "--batch_size=12", "--steps=6"]
    out = launch(
        "experiments.eval_mnist",
        *args,
        "--adversary=mnist",
        "--adversary_fraction=0.2",
        "--inject_at=2",
        "--remove_at=4",
    )
    assert out["adversary_target"] == 8 and out["digits_attacked"] == 12  # no 8 among them
    for name in ("cells_voting_target", "digits_hijacked", "digits_recovered"):
        assert 0 <= out[name] <= 1
    assert 0 <= out["cells_voting_target_before_removal"] <= 1
    err = launch("experiments.eval_mnist", *args, "--adversary=mnist", "--remove_at=9", ok=False)
    assert "remove_at" in err


def test_report_section_without_adversaries(tmp_path, monkeypatch):
    """No reference folder and no shipped adversary: the section says so and measures nothing."""
    from experiments import report_adversaries
    from nca_adv.media import report

    shipped = {k: v for k, v in io.shipped_models().items() if "adversary" not in k}
    monkeypatch.setattr(io, "shipped_models", lambda: shipped)
    rep = report.HtmlReport(tmp_path / "r.html", "t")
    assert report_adversaries.section(rep, tmp_path, None, jax.random.PRNGKey(0)) == {}
    page = rep.write().read_text()
    assert "No MNIST adversary available" in page and "No growing adversary available" in page
