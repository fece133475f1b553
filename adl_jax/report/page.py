"""What every HTML page of adl-jax is made of: one style sheet, matplotlib figures inlined as SVG, one
page frame. Pages are self-contained files, readable offline and on machines without a display."""

from __future__ import annotations

import html
import io

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .5em;vertical-align:top}
th{background:#f4f4f4} .tok{font-family:monospace;background:#eef;border-radius:3px;padding:0 .25em;margin:1px;display:inline-block}
.hit{background:#cfc} .note{color:#666;font-size:.9em} .verdict{background:#fffbe6;border:1px solid #f0e0a0;padding:.8em 1em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em} .sample{background:#f8f8f8;padding:.5em;white-space:pre-wrap;font-size:.85em;margin:.3em 0}
"""


def subplots(*args, **kwargs):
    """`plt.subplots` on the Agg backend, chosen here for every page: figures are only ever saved, never
    shown, and a server or TPU VM has no display. matplotlib is imported only when a page draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def svg(fig) -> str:
    """The figure as an inline <svg> element (the XML prologue dropped), and the figure closed."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def table(head: list[str], rows: list[list[str]]) -> str:
    """A table of plain-text cells (escaped here) under one header row."""
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)
    body = "".join("<tr>" + cells("td", r) + "</tr>" for r in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    """A whole self-contained page: the shared style and `body` (HTML). The empty icon keeps a browser from
    requesting /favicon.ico: the page fetches nothing."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<link rel='icon' href='data:,'><style>{CSS}</style>"
        f"</head><body>{body}</body></html>"
    )
