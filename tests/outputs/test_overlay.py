"""The report's pictures: the lesson's colour ramp, the 50% overlay over the whole image, boxes and legend."""

from __future__ import annotations

import numpy as np
from PIL import Image

from camray.outputs.overlay import BOX_COLOURS, RAMP_STOPS, LabelledBox, draw_boxes, overlay, ramp


def _hex(colour: np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02X}" for v in colour)


def test_ramp_passes_through_the_six_stops_and_interpolates_between():
    stops = ramp(np.linspace(0, 1, 6)[None, :])[0]
    assert [_hex(colour) for colour in stops] == list(RAMP_STOPS)
    assert RAMP_STOPS == ("#000099", "#00FEFF", "#45FE4F", "#FCFF00", "#FF9400", "#FF3100")
    # Halfway between the first two stops (0 and 0.2): the mean of #000099 and #00FEFF.
    np.testing.assert_allclose(ramp(np.array([[0.1]]))[0, 0], [0, 127, 204], atol=1)
    np.testing.assert_array_equal(ramp(np.array([[-3.0, 7.0]]))[0], [[0, 0, 153], [255, 49, 0]])  # clipped


def test_overlay_is_half_photo_half_map_and_covers_the_whole_image():
    gray = np.full((60, 80), 100, dtype=np.uint8)
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[:, 4:] = 1.0  # the right three columns of seven
    out = overlay(gray, heat)
    assert out.shape == (60, 80, 3)
    np.testing.assert_allclose(out[30, 2], [50, 50, 126.5], atol=1)  # 0.5 gray + 0.5 #000099
    np.testing.assert_allclose(out[30, 78], [177.5, 74.5, 50], atol=1)  # 0.5 gray + 0.5 #FF3100
    # The map is stretched over the whole width: its edge (4/7 of the way) lands at 4/7 of 80 pixels.
    red = out[30, :, 0] > 120
    assert abs(int(np.argmax(red)) - 80 * 4 / 7) <= 4


def _legend_height(picture: np.ndarray) -> int:
    """Rows of column 6 (inside the legend panel, left of any box here) that differ from the gray background."""
    return int((np.abs(picture[:, 6].astype(int) - 128).sum(axis=-1) > 0).sum())


def test_boxes_are_scaled_to_the_picture_with_one_legend_entry_per_class():
    picture = Image.new("RGB", (200, 100), (128, 128, 128))
    boxes = [
        LabelledBox(100, 100, 300, 180, "tabby", 0.75),
        LabelledBox(20, 120, 60, 190, "tabby", 0.75),
        LabelledBox(320, 20, 390, 90, "lynx", 0.1),
    ]
    drawn = np.asarray(draw_boxes(picture, boxes, (400, 200)))
    first, second = (np.array([int(BOX_COLOURS[i][k : k + 2], 16) for k in (1, 3, 5)]) for i in (0, 1))
    # The first box, halved: left edge at x = 50, from y = 50 to 89.
    np.testing.assert_array_equal(drawn[70, 50], first)
    np.testing.assert_array_equal(drawn[25, 160], second)  # lynx: (320, 20, 390, 90) / 2, its left edge x = 160
    single = np.asarray(draw_boxes(picture, boxes[:1], (400, 200)))
    double = np.asarray(draw_boxes(picture, boxes[:2], (400, 200)))
    assert _legend_height(single) == _legend_height(double) < _legend_height(drawn)  # same class, one entry
    assert (drawn[8:20, 25:80].min(axis=-1) < 60).any()  # the legend's text is drawn
