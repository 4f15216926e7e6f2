"""Regenerate the six edited lizard targets of the adversarial reprogramming article from the
project's lizard (nca_adv/assets/targets/lizard.png, 128x128), with the regions below.

  python -m experiments.make_targets [--out=nca_adv/assets/targets] [--preview=out/targets.png]

Polygons are (x, y) pixel corners on the 128x128 lizard (head top left, tail bottom right;
fore legs: top right and left; hind legs: right and bottom). The last stdout line is JSON.
"""

from __future__ import annotations

import numpy as np
from absl import flags
from PIL import Image

from nca_adv.io import target_edits, targets
from nca_adv.media import video

from .common import check_output_dir, check_output_file, print_result, run

FLAGS = flags.FLAGS

REGIONS = {
    # Cut across the neck below the eyes and above the first spot.
    "lizard_no_head": [[(0, 0), (62, 0), (54, 16), (52, 26), (50, 33), (18, 41), (0, 41)]],
    # Cut across the body just past the hind legs; the curled tail and everything after.
    "lizard_no_tail": [[(68, 128), (68, 97), (80, 93), (95, 86), (128, 78), (128, 128)]],
    # Hind legs: the right one and the bottom one, cut along the body outline.
    "lizard_no_leg": [
        [(73, 56), (80, 50), (86, 36), (110, 36), (110, 66), (84, 66), (79, 64)],
        [(40, 86), (52, 78), (60, 77), (70, 82), (70, 90), (62, 110), (40, 110)],
    ],
    # Fore legs: the top right one and the left one.
    "lizard_no_arm": [
        [(51, 36), (52, 18), (74, 18), (74, 34), (68, 42), (62, 47), (57, 44)],
        [(12, 48), (34, 48), (34, 56), (36, 60), (42, 72), (36, 78), (12, 78)],
    ],
}
# Target hues of the body colour (HSV degrees). The authors' lizard is green at about
# 105 degrees, so their red and blue are rotations of about -105 and +135; this lizard's
# green sits at about 145 degrees, where a literal -105 gives brown-orange.
HUES = {"lizard_red": 0.0, "lizard_blue": 240.0}


def edited_targets(lizard: np.ndarray) -> dict[str, np.ndarray]:
    """The six edited (H, W, 4) uint8 images from the straight-alpha lizard."""
    out = {name: target_edits.erase_polygons(lizard, polys) for name, polys in REGIONS.items()}
    out.update({name: target_edits.recolour(lizard, deg) for name, deg in HUES.items()})
    return out


def _define_flags() -> None:
    """Flags of the launch only (tests import this module for its regions)."""
    flags.DEFINE_string(
        "out", str(targets.shipped_target_path("lizard").parent), "Folder for the six PNGs."
    )
    flags.DEFINE_string(
        "preview", None, "Also write a zoomed grid (lizard, then the six edits, as 40x40 targets)."
    )


def main(argv):
    del argv
    out = check_output_dir(FLAGS.out, "out")
    if FLAGS.preview:
        check_output_file(FLAGS.preview, "preview", (".png",))
    lizard = np.asarray(targets.load_rgba(targets.shipped_target_path("lizard")))
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, img in edited_targets(lizard).items():
        path = out / f"{name}.png"
        Image.fromarray(img, "RGBA").save(path, optimize=True)
        written[name] = str(path)
    result = {"targets": written}
    if FLAGS.preview:
        names = ["lizard", *sorted(written)]
        pics = [targets.load_target(str(targets.shipped_target_path("lizard")), padding=2)]
        pics += [targets.load_target(written[n], padding=2) for n in names[1:]]
        grid = video.image_grid(video.zoom(video.to_uint8(video.rgba_to_rgb(np.stack(pics))), 4), 7)
        result["preview"] = str(video.save_image(FLAGS.preview, grid))
        result["preview_order"] = names
    print_result(result)


if __name__ == "__main__":
    _define_flags()
    run(main)
