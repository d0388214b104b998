"""The Jinja2 environment of the report page: templates under ``templates/`` (package data),
autoescaped, with the number formatters as filters. A chart's SVG (``svg.chart``, escaped where
it is built) and a section rendered by these templates enter other templates as ``Markup``.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from app.reports import fmt

ENV = Environment(loader=PackageLoader("app.reports", "templates"), autoescape=True,
                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(fmt_num=fmt.fmt_num, fmt_ms=fmt.fmt_ms, fmt_x=fmt.fmt_x, fmt_pct=fmt.fmt_pct,
                   fmt_bytes=fmt.fmt_bytes, fmt_throughput=fmt.fmt_throughput,
                   short_provider=fmt.short_provider, short_id=fmt.short_id, compact_json=fmt.compact_json)


def render(template: str, **context: Any) -> Markup:
    return Markup(ENV.get_template(template).render(**context))
