"""The "did you mean" hint of artmed's unknown-name errors (config keys, defense, attack and trigger names)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" naming the choice closest to a misspelt `word` (``difflib``'s ratio >= 0.6), or ""
    when none is close, or `word` is not a string."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def did_you_mean_each(words: Iterable[object], choices: Iterable[str]) -> str:
    """The hint for several unknown `words`: ``did_you_mean``'s for one, else " (did you mean 'seed' for 'sed',
    'n_train' for 'n_trian'?)" over those with a close choice; "" when none has one."""
    words, choices = list(words), [str(c) for c in choices]
    if len(words) == 1:
        return did_you_mean(words[0], choices)
    pairs = [(word, difflib.get_close_matches(word, choices, n=1)) for word in words if isinstance(word, str)]
    listed = ", ".join(f"{close[0]!r} for {word!r}" for word, close in pairs if close)
    return f" (did you mean {listed}?)" if listed else ""
