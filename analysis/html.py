"""report.html: the summary rendered through analysis/templates/report.html.j2, with the figures
inlined as data URIs so the file stands alone (it is mailed around and archived)."""

import base64
import math
from pathlib import Path
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("analysis", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def number(value: Any, digits: int = 4) -> str:
    """A table cell: ints as is, floats to `digits` significant digits, missing as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    return f"{100 * value:+.1f} %"


_ENV.filters["num"] = number
_ENV.filters["pct"] = percent


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(summary: dict[str, Any], figure_dir: Path) -> str:
    """The report page for a JSON-ready summary; figures are read from figure_dir."""
    images = {name: _data_uri(figure_dir / name) for name in summary.get("figures", [])}
    return _ENV.get_template("report.html.j2").render(s=summary, images=images)
