"""The funnel plot: documents kept after each step of the data pipeline (PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_funnel(points: list[tuple[str, int]], path: Path, title: str) -> Path:
    from aistack.track.figures import pyplot, save_png

    labels = [p[0] for p in points]
    values = [p[1] for p in points]
    first = values[0] if values and values[0] else 1
    fig, ax = pyplot().subplots(figsize=(8, 0.5 * len(points) + 1.5))
    bars = ax.barh(range(len(points)), values, color="#4C72B0")
    ax.set_yticks(range(len(points)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("documents kept")
    ax.set_title(title)
    for bar, value in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value} ({100 * value / first:.1f}%)", va="center")
    ax.set_xlim(0, max(values + [1]) * 1.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path)
