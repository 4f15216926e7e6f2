import numpy as np
import pytest
from PIL import Image

from nca_adv.io import targets


def test_shipped_lizard_preprocessing():
    t = targets.load_target("lizard")
    assert t.shape == (72, 72, 4) and t.dtype == np.float32
    assert 0 <= t.min() and t.max() <= 1
    # Premultiplied: colour never exceeds alpha; padding of 16 is empty.
    assert (t[..., :3] <= t[..., 3:] + 1e-6).all()
    assert not t[:16].any() and not t[-16:].any() and not t[:, :16].any() and not t[:, -16:].any()
    assert (t[..., 3] > 0.5).sum() > 300


def test_reference_target_preprocessing(reference):
    t = targets.load_target(str(reference / "targets" / "noto_emoji_u1f98e_2018.png"))
    assert t.shape == (72, 72, 4)


def test_png_path_and_thumbnail(tmp_path):
    img = np.zeros((80, 40, 4), np.uint8)
    img[..., 0] = 255
    img[..., 3] = 128
    Image.fromarray(img, "RGBA").save(tmp_path / "t.png")
    t = targets.load_target(str(tmp_path / "t.png"))
    # 40 wide x 80 high -> thumbnail keeps the aspect: 20 x 40, padded by 16 on each side.
    assert t.shape == (72, 52, 4)
    np.testing.assert_allclose(t[36, 26], [128 / 255, 0, 0, 128 / 255], atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "rgb", "jpeg", "garbage", "unknown"])
def test_bad_targets_raise(tmp_path, case):
    if case == "missing":
        with pytest.raises(FileNotFoundError, match="does not exist"):
            targets.load_target(str(tmp_path / "nope.png"))
    elif case == "rgb":
        Image.new("RGB", (10, 10)).save(tmp_path / "rgb.png")
        with pytest.raises(ValueError, match="no alpha channel"):
            targets.load_target(str(tmp_path / "rgb.png"))
    elif case == "jpeg":
        Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
        with pytest.raises(ValueError, match="must be RGBA PNGs"):
            targets.load_rgba(tmp_path / "x.jpg")
    elif case == "garbage":
        (tmp_path / "g.png").write_bytes(b"\x89PNG garbage")
        with pytest.raises(ValueError, match="not a readable image"):
            targets.load_target(str(tmp_path / "g.png"))
    else:
        with pytest.raises(KeyError, match="unknown target"):
            targets.load_target("dragon")
