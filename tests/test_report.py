"""The page builder every HTML page uses: one style, escaped text, figures inlined and closed."""

import re
from pathlib import Path

from adl_jax.report.page import CSS, page, subplots, svg, table

ROOT = Path(__file__).parents[1]


def test_one_place_chooses_the_matplotlib_backend():
    users = [
        str(p.relative_to(ROOT))
        for package in ("adl_jax", "finetune")
        for p in (ROOT / package).rglob("*.py")
        if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot", p.read_text())
    ]
    assert users == ["adl_jax/report/page.py"]


def test_page_table_and_figure():
    import matplotlib
    import matplotlib.pyplot as plt

    fig, ax = subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    assert matplotlib.get_backend().lower() == "agg"
    drawn = svg(fig)
    assert drawn.startswith("<svg") and drawn.rstrip().endswith("</svg>") and not plt.get_fignums()
    html = page("a < b", table(["x & y"], [["<i>1</i>", "2"]]) + drawn)
    assert "<title>a &lt; b</title>" in html and CSS in html and html.endswith("</body></html>")
    assert "<th>x &amp; y</th>" in html and "<td>&lt;i&gt;1&lt;/i&gt;</td><td>2</td>" in html
