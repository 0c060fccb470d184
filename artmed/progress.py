"""What artmed prints while it works: progress bars only on a terminal, one line per finished study cell in a log,
and each distinct warning once with its count.

A log (stderr not a terminal: CI, ``nohup``, a pipe) gets no escape codes: ``tqdm`` here is tqdm's, disabled unless
stderr is a terminal, and ``study_bar`` prints a plain line per cell (done / total, elapsed, ETA) instead of its bar.
``console_warnings`` shows each distinct warning once as ``warning: Category: message`` (no source line) and, at the
end, how often the repeated ones came; with ``quiet`` it shows none and only counts them.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm as _tqdm

__all__ = ["tqdm", "study_bar", "console_warnings", "on_terminal"]

T = TypeVar("T")


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr, where progress goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """tqdm's progress bar, disabled when stderr is not a terminal (a log gets no bars) as well as when asked."""
    kwargs["disable"] = bool(kwargs.get("disable", False)) or not on_terminal(kwargs.get("file"))
    return _tqdm(*args, **kwargs)


class _LineProgress:
    """``study_bar`` off a terminal: one line per finished item on stderr, with elapsed time and an ETA."""

    def __init__(self, items: list[Any], desc: str) -> None:
        self.items, self.desc, self.postfix = items, desc, ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def __iter__(self) -> Iterator[Any]:
        start, total = time.monotonic(), len(self.items)
        for done, item in enumerate(self.items, start=1):
            yield item
            elapsed = time.monotonic() - start
            eta = elapsed / done * (total - done)
            print(
                f"{self.desc}: {done}/{total} done ({self.postfix}); elapsed {_clock(elapsed)}, ETA {_clock(eta)}",
                file=sys.stderr,
                flush=True,
            )


def study_bar(items: Iterable[T], desc: str, verbose: bool = True) -> Any:
    """The study-level progress over ``items`` (cells): a tqdm bar with its ETA on a terminal, a plain line per
    finished item in a log, nothing when not ``verbose``. Supports ``set_postfix_str`` either way."""
    items = list(items)
    if not verbose:
        return _tqdm(items, disable=True)
    if on_terminal():
        return _tqdm(items, desc=desc)
    return _LineProgress(items, desc)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@contextmanager
def console_warnings(quiet: bool = False, stream: TextIO | None = None) -> Iterator[Counter[str]]:
    """Within the block, show each distinct warning once (``warning: Category: message``, no source line) and on
    leaving it say how often each repeated one came; ``quiet`` shows nothing. Yields the counts by text."""
    counts: Counter[str] = Counter()
    out = sys.stderr if stream is None else stream

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = f"{category.__name__}: {message}"
        counts[text] += 1
        if counts[text] == 1 and not quiet:
            print(f"warning: {text}", file=out, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # every occurrence reaches show(), which says each text once
        warnings.showwarning = show
        try:
            yield counts
        finally:
            repeated = {text: n for text, n in counts.items() if n > 1}
            if repeated and not quiet:
                for text, n in repeated.items():
                    print(f"warning ({n} times): {text}", file=out)
