"""MkDocs hook: the docstrings' Sphinx roles (``:meth:`fit```, ``:class:`~radar_ad.Radar```)
read as plain code in the API reference, which mkdocstrings renders from
Markdown."""

from __future__ import annotations

import re
from typing import Any

# a role before the code element mkdocstrings made of its backquoted target; "~" keeps the last name only
ROLE = re.compile(r":(?:meth|class|func|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _plain(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(_plain, html)
