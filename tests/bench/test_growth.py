"""The growth report: ratios between consecutive sizes, and a PNG plot that a real image reader opens."""

from __future__ import annotations

from PIL import Image

from bench.growth import SERIES, growth_table, plot


def results(scale: float) -> dict:
    phases = {p: {"seconds": scale * (i + 1)} for i, p in enumerate(SERIES)}
    return {**phases, "floor": {"seconds": scale / 2}}


def test_the_growth_table_shows_each_size_and_the_ratio_to_the_one_before():
    out = growth_table({1_000: results(1.0), 3_000: results(2.5)})
    lines = out.splitlines()
    assert lines[2].split("|")[1].strip() == "1,000"
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["3,000", "2.50", "5.00", "7.50", "10.00", "12.50", "1.25"]
    assert [c.strip() for c in lines[4].split("|")[1:-1]] == ["x3 members", *["x2.50"] * 6]


def test_the_plot_is_a_png(tmp_path):
    path = tmp_path / "img" / "growth.png"
    plot({1_000: results(1.0), 3_000: results(2.5), 10_000: results(9.0)}, path)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] > 500 and img.size[1] > 300
