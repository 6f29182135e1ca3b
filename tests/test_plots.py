"""`lamda.plots`: atomic figure writes and the resolution they are written at."""
import os

import pytest
from PIL import Image

from lamda import plots


def _figure():
    fig, ax = plots.new_figure()
    ax[0, 0].plot([0, 1], [1, 0])
    return fig


def _dpi(path) -> int:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return round(im.info["dpi"][0])


def test_save_writes_one_png_at_the_studies_resolution(tmp_path):
    plots.save(_figure(), tmp_path / "sub" / "f.png")
    assert (tmp_path / "sub" / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path / "sub") == ["f.png"]
    assert _dpi(tmp_path / "sub" / "f.png") == plots.DPI == 300


def test_figure_dpi_sets_the_resolution_within_its_block(tmp_path):
    with plots.figure_dpi(150):
        assert plots.current_dpi() == 150
        plots.save(_figure(), tmp_path / "a.png")
        plots.save(_figure(), tmp_path / "b.png", dpi=200)        # an explicit dpi wins
    assert plots.current_dpi() == 300
    plots.save(_figure(), tmp_path / "c.png")
    assert [_dpi(tmp_path / n) for n in ("a.png", "b.png", "c.png")] == [150, 200, 300]


@pytest.mark.parametrize("bad", [72, 301, 150.5, "150", True])
def test_resolutions_outside_the_range_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"dpi must be an integer in \[150, 300\]"):
        with plots.figure_dpi(bad):
            pass
    fig = _figure()
    with pytest.raises(ValueError, match="dpi"):
        plots.save(fig, tmp_path / "x.png", dpi=bad)
    plots.plt.close(fig)
    assert not (tmp_path / "x.png").exists()
