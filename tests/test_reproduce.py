"""The main job (`make run`), run tiny: the report's media exist, videos have posters, and
results.json holds the numbers with the counts they were measured on."""

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nca_adv.media import report, video

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--mnist_digits=16", "--swap_digits=4", "--growing_runs=2", "--sections=lizard,mnist"]


def reproduce(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )


class _Media(HTMLParser):
    """Collects the img and video tags of a page with their attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "video"):
            self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = reproduce(f"--out={out}", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, json.loads(res.stdout.strip().splitlines()[-1])


def test_report_media_exist_and_videos_have_posters(tiny_report):
    out, _ = tiny_report
    page = (out / "report.html").read_text()
    parser = _Media()
    parser.feed(page)
    videos = [a for t, a in parser.tags if t == "video"]
    images = [a for t, a in parser.tags if t == "img"]
    assert len(videos) == 3 and len(images) >= 7
    for attrs in videos + images:
        assert (out / attrs["src"]).is_file(), attrs["src"]
    for attrs in videos:
        assert "poster" in attrs, f"video {attrs['src']} has no poster"
        poster = np.asarray(Image.open(out / attrs["poster"]))
        assert poster.ndim == 3 and poster.std() > 10, f"poster of {attrs['src']} is blank"
    # Pictures are scaled to the page width, never wider.
    assert "max-width:100%" in page and "height:auto" in page


def test_results_hold_numbers_counts_and_timing(tiny_report):
    out, printed = tiny_report
    results = json.loads((out / "results.json").read_text())
    assert printed["report"] == str(out / "report.html")
    assert {k: v for k, v in printed.items() if k != "report"} == results
    assert results["growing_runs"] == 2
    assert results["mnist_digits"] == 16 and results["swap_digits"] == 4
    for key in (
        "lizard_loss_step200",
        "lizard_loss_step400_uncut",
        "lizard_loss_after_regrowth",
    ):
        assert 0 < results[key] < 0.1, key
    for key in (
        "mnist_cell_accuracy_step200",
        "mnist_total_agreement_step200",
        "mnist_swap_cell_accuracy_step400",
    ):
        assert 0 <= results[key] <= 1, key
    assert set(results["timing"]) == {"lizard", "mnist"} == set(results["cpu_seconds"])
    assert results["seconds"] >= sum(results["timing"].values())
    page = (out / "report.html").read_text()
    assert "the first 16 for the accuracy" in page and "the first 4 of them" in page


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mnist_digits=16", "--swap_digits=20"], "must not exceed --mnist_digits"),
        (["--sections=lizard,dragons"], "unknown section 'dragons'"),
    ],
)
def test_bad_flags_are_refused(tmp_path, args, message):
    res = reproduce(f"--out={tmp_path}", *args)
    assert res.returncode != 0 and message in res.stderr
    assert not (tmp_path / "report.html").exists()


def test_video_poster_replaces_autoplay(tmp_path):
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[-1, 2:6, 2:6] = 200  # only the last frame shows something
    path = video.write_video(tmp_path / "media" / "v.mp4", frames)
    poster = video.save_poster(path, frames)
    assert poster == tmp_path / "media" / "v_poster.png"
    assert np.array_equal(np.asarray(Image.open(poster)), frames[-1])
    rep = report.HtmlReport(tmp_path / "r.html", "t")
    rep.video(path, "with poster", poster=poster)
    rep.video(path, "without")
    with_poster, without = rep.write().read_text().split("<video")[1:]
    assert 'poster="media/v_poster.png"' in with_poster and "autoplay" not in with_poster
    assert "poster" not in without.split(">")[0] and "autoplay" in without.split(">")[0]
