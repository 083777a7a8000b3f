"""The one renderer: every report page, section and sentence comes from the Jinja2 templates in
`analysis/templates/`, filled from typed results (`analysis.results`). A sentence macro renders as
HTML for the report and as plain text for the terminal and the notebooks, from the same objects:
nothing is parsed back out of HTML.

    render.page("report.html.j2", title=..., ...)    -> the HTML page
    render.sentence("conclusion", c)                 -> HTML (markup=True) or plain text
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import cache

import jinja2
from markupsafe import Markup

from analysis.results import ALPHA, LEVEL
from analysis.stats import FEW_RUNS

__all__ = ["Figure", "Markup", "figure", "fragment", "html_table", "page", "sentence"]

# The glyphs sentences use: HTML entities on the page (as reports always printed them), characters
# in the terminal.
_GLYPHS = {"plusmn": ("&plusmn;", "±"), "minus": ("&minus;", "−"), "times": ("&times;", "×"), "lt": ("&lt;", "<")}


@dataclass(frozen=True)
class Figure:
    """A figure as an embedded PNG (base64), what `<img src="data:...">` takes."""

    png_base64: str

    def __html__(self) -> str:
        return f'<img src="data:image/png;base64,{self.png_base64}">'


def figure(fig, dpi: int = 90) -> Figure:
    """A matplotlib figure as a Figure; closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return Figure(base64.b64encode(buf.getvalue()).decode())


def html_table(frame, **kwargs) -> Markup:
    """A pandas frame as an HTML table (pandas escapes the cells)."""
    return Markup(frame.to_html(**kwargs))


@cache
def _env(markup: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"), autoescape=markup,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=False)
    env.globals.update({name: Markup(glyphs[0]) if markup else glyphs[1] for name, glyphs in _GLYPHS.items()})
    env.globals["b"] = (lambda x: Markup("<b>{}</b>").format(x)) if markup else str
    env.globals.update(markup=markup, alpha=ALPHA, alpha_pct=f"{ALPHA:.0%}", level_pct=f"{LEVEL:.0%}",
                       few_runs=FEW_RUNS)
    env.filters["fmt"] = lambda value, spec: format(value, spec)
    return env


def sentence(name: str, *args, markup: bool = True) -> str:
    """The macro `name` of templates/sentences.j2 applied to `args`: HTML, or plain text when markup
    is False. One line, whitespace collapsed."""
    macro = getattr(_env(markup).get_template("sentences.j2").module, name)
    return " ".join(str(macro(*args)).split())


def page(template: str, **context) -> str:
    """A whole HTML template rendered with `context`."""
    return _env(True).get_template(template).render(**context)


def fragment(template: str, **context) -> Markup:
    """A section template rendered as HTML to drop into a page."""
    return Markup(page(template, **context))
