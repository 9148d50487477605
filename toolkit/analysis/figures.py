"""Figures for reports: one colour-blind-safe palette, matplotlib (Agg) rendered to inline SVG."""

from __future__ import annotations

import io
from typing import Any

# Okabe & Ito (2008) colour-blind-safe palette
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
LABEL_COLOURS = {"benign": "#0072B2", "malignant": "#D55E00"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def colour_for(label: str, labels: list[str]) -> str:
    """The colour of ``label``: fixed for benign/malignant, else by position in ``labels``."""
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    return PALETTE[labels.index(label) % len(PALETTE)]


def new_figure(width: float = 6.0, height: float = 4.2) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the Agg backend, styled for reports. Text is drawn as given: a
    label holding ``$`` is never parsed as mathtext (which would raise on ``$\\frac{$``)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "tk", "text.parse_math": False})
    return plt.subplots(figsize=(width, height))


def to_svg(figure: Any) -> str:
    """Render and close ``figure``; returns the SVG document without the XML prologue."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]
