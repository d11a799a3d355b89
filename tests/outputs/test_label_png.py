"""Label maps as VOC-style indexed PNGs: read back by PIL with the palette and the values, and as torchvision's
`VOCSegmentation` reads its targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camray.outputs.label_png import read_classes, read_label_png, voc_palette, write_classes, write_label_png


def test_the_palette_is_vocs() -> None:
    palette = np.array(voc_palette()).reshape(256, 3)
    # The VOC devkit's colours of background, aeroplane, person (15) and void (255).
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]
    assert len({tuple(colour) for colour in palette}) == 256


def test_a_written_label_map_reads_back_as_values_and_colours(tmp_path) -> None:
    label_map = np.zeros((30, 40), dtype=np.uint8)
    label_map[5:10, 5:20] = 1
    label_map[12:20, 10:30] = 15
    label_map[0, :] = 255
    path = tmp_path / "deep" / "a.png"
    write_label_png(path, label_map)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
        rgb = np.asarray(image.convert("RGB"))
    assert rgb[6, 6].tolist() == [128, 0, 0] and rgb[0, 0].tolist() == [224, 224, 192]
    assert np.array_equal(read_label_png(path), label_map)
    # torchvision's VOCSegmentation opens the target with PIL and its transforms take the values as they are.
    with Image.open(path) as target:
        assert torch.equal(torch.as_tensor(np.array(target), dtype=torch.int64), torch.from_numpy(label_map).long())


def test_colour_pngs_and_bad_names_are_refused(tmp_path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="uint8"):
        write_label_png(tmp_path / "x.png", np.zeros((3, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="cannot be a line"):
        write_classes(tmp_path, ["cat", "two\nlines"])


def test_classes_files_in_both_layouts(tmp_path) -> None:
    write_classes(tmp_path / "a", ["cat", "dog"])
    assert read_classes(tmp_path / "a" / "classes.txt") == {1: "cat", 2: "dog"}
    (tmp_path / "b.txt").write_text("_background_\ncat\ndog\n\n")
    assert read_classes(tmp_path / "b.txt") == {1: "cat", 2: "dog"}
    (tmp_path / "c.txt").write_text("cat\ncat\n")
    with pytest.raises(ValueError, match="named twice"):
        read_classes(tmp_path / "c.txt")
