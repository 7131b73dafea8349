"""The results report: regenerated table, hand-written analysis below the marker kept."""

from pathlib import Path

from models.registry import get_config
from training.report import MARKER, write_report


def _groups(top1: float) -> dict:
    cfg = get_config("vit-fashion", depth=2)
    run = {
        "cfg": cfg,
        "similarity": [0.5, 0.25],
        "metrics": {
            "top1": top1,
            "parameters": 1234,
            "wall_time_s": 120.0,
            "command": "neutreno train vit-fashion --depth 2",
        },
    }
    return {"ViT": [run]}


def test_report_regenerates_the_table_and_keeps_the_analysis(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    write_report(_groups(0.5), tmp_path / "plot.png", out)
    out.write_text(out.read_text() + "\n## Analysis\n\nhand-written words\n")
    write_report(_groups(0.9123), tmp_path / "plot.png", out)
    text = out.read_text()
    row = (
        "| vit-fashion (depth 2) | neutreno | 0.6 | 1,234 | top-1 91.23% | 0.250 | 2.0 min (cpu) |"
    )
    assert row in text
    assert "top-1 50.00%" not in text
    assert text.count(MARKER) == 1 and text.endswith("## Analysis\n\nhand-written words\n")
    assert "- ViT, neutreno: 0.500, 0.250" in text
