"""Figures: valid PNGs, the same bytes on a rerun (they are tracked outputs), empty inputs drawn too."""

from __future__ import annotations

import pytest

from ups.figures import curves_figure, probe_figure, usage_figure

PNG = b"\x89PNG\r\n\x1a\n"
ROWS = [{"layer": k, "init_accuracy": 0.3 + 0.05 * k, "continued_accuracy": 0.35 + 0.05 * k,
         "mfcc_accuracy": 0.25, "chance_majority": 0.1} for k in range(4)]


@pytest.mark.parametrize("draw", [
    lambda p: probe_figure(p, ROWS),
    lambda p: probe_figure(p, [{"layer": 0, "init_accuracy": None, "continued_accuracy": 0.5}]),
    lambda p: curves_figure(p, {"train/loss": [(0, 3.0), (10, 2.0)], "valid/loss": [(10, 2.5)]},
                            title="loss", ylabel="loss"),
    lambda p: curves_figure(p, {}, title="nothing yet", ylabel="loss"),
    lambda p: usage_figure(p, [5, 0, 3, 9], title="usage"),
    lambda p: usage_figure(p, [], title="no clusters"),
])
def test_a_figure_is_a_png_with_the_same_bytes_twice(tmp_path, draw):
    draw(tmp_path / "a.png")
    draw(tmp_path / "b.png")
    a = (tmp_path / "a.png").read_bytes()
    assert a.startswith(PNG) and len(a) > 1000
    assert a == (tmp_path / "b.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporaries left


def test_other_data_draws_another_figure(tmp_path):
    usage_figure(tmp_path / "a.png", [5, 0, 3, 9], title="usage")
    usage_figure(tmp_path / "b.png", [1, 1, 1, 1], title="usage")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
