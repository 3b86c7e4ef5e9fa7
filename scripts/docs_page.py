"""What every reference-page generator (``scripts/docs_*.py``) shares: write
the page, or, with ``--check``, exit 1 in one line when the committed page
differs from what the code gives."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def page_main(render: Callable[[], str], page: Path, generator: str, description: str,
              argv: list[str] | None = None) -> int:
    """The command line of a generator whose ``render()`` gives ``page``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page differs")
    parser.add_argument("--output", type=Path, default=page, help="page to write or check")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != text:
            print(f"{shown(args.output)} is out of date with the code: run python {generator}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {shown(args.output)}")
    return 0
