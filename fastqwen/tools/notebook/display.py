"""Output helpers shared by every notebook view: figures as PNG bytes, and IPython display.

Builders elsewhere return PNG bytes, HTML or DataFrames so they are tested without a
kernel; `show` is the one place that hands them to IPython.
"""

from __future__ import annotations

import html
import io

BOX_STYLE = "padding:0.6em 1em;margin:0.5em 0;border-radius:4px;border:2px solid {c};background:{b}"


def banner_html(text: str) -> str:
    """A red box for random weights, the same in every report; empty for no text."""
    if not text:
        return ""
    style = BOX_STYLE.format(c="#c0392b", b="#fdecea")
    return f'<div class="fq-banner" style="{style}"><b>{html.escape(text)}</b></div>'


def png(fig) -> bytes:
    """A matplotlib `Figure` as PNG bytes (no pyplot state, any backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def show(*objs) -> None:
    """IPython's display, with whole table cells and every column (pandas would cut cells
    at 50 characters and hide middle columns)."""
    import pandas as pd
    from IPython.display import display

    with pd.option_context("display.max_colwidth", None, "display.max_columns", None):
        display(*objs)


def show_png(data: bytes) -> None:
    """Display PNG bytes (a figure from a builder) as an image."""
    from IPython.display import Image

    show(Image(data=data, format="png"))


__all__ = ["BOX_STYLE", "banner_html", "png", "show", "show_png"]
