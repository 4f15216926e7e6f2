"""Target edits (erase a polygon or mask, hue rotation) and the six shipped edited lizards."""

import numpy as np
import pytest
from PIL import Image
from test_experiments import launch

from experiments import make_targets
from nca_adv.io import target_edits as te
from nca_adv.io import targets

EDITS = ["lizard_no_tail", "lizard_no_leg", "lizard_no_arm", "lizard_no_head"]


@pytest.fixture(scope="module")
def lizard():
    return np.asarray(targets.load_rgba(targets.shipped_target_path("lizard")))


def test_erase_polygon_and_mask():
    img = np.full((10, 12, 4), 200, np.uint8)
    out = te.erase_polygons(img, [[(2, 2), (6, 2), (6, 6), (2, 6)]])
    assert (out[3:6, 3:6] == 0).all()  # inside: RGB and alpha 0
    assert (out[8:, :] == 200).all() and (out[:, 8:] == 200).all()  # outside untouched
    assert (img == 200).all()  # the input is not modified
    mask = np.zeros((10, 12), bool)
    mask[0, 0] = True
    assert (te.erase_mask(img, mask)[0, 0] == 0).all() and te.erase_mask(img, mask)[0, 1, 3] == 200


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda img: te.erase_mask(img, np.zeros((3, 3), bool)), "mask shape"),
        (lambda img: te.erase_polygons(img, [[(0, 0), (1, 1)]]), "at least 3 corners"),
        (lambda img: te.rotate_hue(img[..., :3], 10), r"\(H, W, 4\) uint8"),
        (lambda img: te.rotate_hue(img.astype(np.float32), 10), r"\(H, W, 4\) uint8"),
        (lambda img: te.dominant_hue(np.zeros_like(img)), "no coloured opaque pixels"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.full((6, 6, 4), 255, np.uint8))


def test_hue_rotation_keeps_white_and_grey():
    px = np.array(
        [
            [255, 255, 255, 255],  # white
            [128, 128, 130, 255],  # near-grey
            [0, 0, 0, 255],  # black
            [0, 200, 0, 180],  # green, partly transparent
            [0, 200, 0, 0],  # fully transparent: left alone
        ],
        np.uint8,
    )[None]
    out = te.rotate_hue(px, -120.0)
    np.testing.assert_array_equal(out[0, :3], px[0, :3])
    np.testing.assert_array_equal(out[0, 3], [200, 0, 0, 180])  # green -> red, alpha kept
    np.testing.assert_array_equal(out[0, 4], px[0, 4])
    np.testing.assert_array_equal(te.rotate_hue(px, 360.0), px)


def test_recolour_lands_on_the_hue(lizard):
    assert 130 < te.dominant_hue(lizard) < 155  # this lizard's green
    for hue in (0.0, 240.0, 60.0):
        got = te.dominant_hue(te.recolour(lizard, hue))
        assert abs((got - hue + 180) % 360 - 180) < 3


def test_shipped_pngs_are_reproducible(lizard):
    """The six PNGs are exactly what experiments/make_targets.py makes from lizard.png."""
    for name, img in make_targets.edited_targets(lizard).items():
        shipped = np.asarray(targets.load_rgba(targets.shipped_target_path(name)))
        np.testing.assert_array_equal(shipped, img, err_msg=name)


@pytest.mark.parametrize("name", EDITS)
def test_erased_parts(lizard, name):
    img = np.asarray(targets.load_rgba(targets.shipped_target_path(name)))
    region = te.polygon_mask(lizard.shape[:2], make_targets.REGIONS[name])
    gone = region & (lizard[..., 3] > 0)
    assert gone.sum() > 150  # a real part of the lizard was there
    assert (img[region] == 0).all()
    np.testing.assert_array_equal(img[~region], lizard[~region])


def test_erased_parts_are_where_expected(lizard):
    """Head top left, tail bottom right, fore legs near the head, hind legs near the tail."""

    def centre(name):
        region = te.polygon_mask(lizard.shape[:2], make_targets.REGIONS[name])
        ys, xs = np.nonzero(region & (lizard[..., 3] > 128))
        return xs.mean(), ys.mean()

    head, tail = centre("lizard_no_head"), centre("lizard_no_tail")
    arm, leg = centre("lizard_no_arm"), centre("lizard_no_leg")
    assert head[0] < 50 and head[1] < 40 and tail[0] > 75 and tail[1] > 95
    dist = lambda p, q: np.hypot(p[0] - q[0], p[1] - q[1])  # noqa: E731
    assert dist(arm, head) < dist(leg, head) and dist(leg, tail) < dist(arm, tail)


@pytest.mark.parametrize("name, hue", [("lizard_red", 0.0), ("lizard_blue", 240.0)])
def test_recoloured_targets(lizard, name, hue):
    img = np.asarray(targets.load_rgba(targets.shipped_target_path(name)))
    got = te.dominant_hue(img)
    assert abs((got - hue + 180) % 360 - 180) < 5
    np.testing.assert_array_equal(img[..., 3], lizard[..., 3])
    rgb = lizard[..., :3].astype(int)
    grey = (rgb.max(-1) - rgb.min(-1) < 0.08 * 255) & (lizard[..., 3] > 0)
    assert grey.sum() > 50  # the black eyes
    np.testing.assert_array_equal(img[grey], lizard[grey])


def test_all_names_load_as_targets():
    for name in ["lizard", *EDITS, "lizard_red", "lizard_blue"]:
        assert targets.load_target(name).shape == (72, 72, 4)


def test_make_targets_launch(tmp_path, lizard):
    out = launch("experiments.make_targets", f"--out={tmp_path}", f"--preview={tmp_path / 'p.png'}")
    assert sorted(out["targets"]) == sorted([*EDITS, "lizard_red", "lizard_blue"])
    again = np.asarray(Image.open(out["targets"]["lizard_no_tail"]))
    shipped = np.asarray(targets.load_rgba(targets.shipped_target_path("lizard_no_tail")))
    np.testing.assert_array_equal(again, shipped)
    assert Image.open(out["preview"]).size[0] > 7 * 40 * 4
