"""Figures as inline SVG, drawn by matplotlib (Agg, no display, no network).

Text stays text (``svg.fonttype = none``), so labels are readable, searchable and
selectable in the page, and the SVG's ids are salted with a fixed string so the
same figures give the same bytes.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure", "svg"]

_STYLE: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "opal-report",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def figure(width: float = 7.5, height: float = 3.0) -> tuple[Figure, Any]:
    """A new figure and its axes (the object-oriented API: no global pyplot state)."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    rcParams.update(_STYLE)
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def svg(fig: Figure, *, label: str) -> str:
    """The figure as an inline ``<svg>`` element with ``aria-label`` and ``data-figure`` = ``label``."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML prolog or doctype inside HTML
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    return text.replace("<svg ", f'<svg role="img" aria-label="{label}" data-figure="{label}" ', 1)
