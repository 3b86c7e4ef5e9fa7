"""Progress bars for long work, shown only on an interactive terminal, so
logs, pipes and CI output stay free of carriage-return noise."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
