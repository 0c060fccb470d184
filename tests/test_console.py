"""What `artmed run` prints: no progress bars or escape codes in a log, one line per finished cell, each distinct
warning once with its count, and with --quiet the tables alone."""

import io
import warnings

import pytest

from artmed.evaluations.cli import main
from artmed.progress import console_warnings, study_bar, tqdm


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    log = io.StringIO()
    list(tqdm(range(3), desc="work", file=log))
    assert log.getvalue() == ""
    screen = Terminal()
    list(tqdm(range(3), desc="work", file=screen))
    assert "work" in screen.getvalue() and "\r" in screen.getvalue()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = study_bar(["a", "b"], "cells")
    for item in bar:
        bar.set_postfix_str(item)
    lines = __import__("sys").stderr.getvalue().splitlines()
    assert [line.split(";")[0] for line in lines] == ["cells: 1/2 done (a)", "cells: 2/2 done (b)"]
    assert "ETA" in lines[0] and "\x1b" not in "".join(lines)


def test_each_warning_once_with_its_count():
    out = io.StringIO()
    with console_warnings(stream=out) as counts:
        for _ in range(3):
            warnings.warn("a group too small", UserWarning, stacklevel=1)
        warnings.warn("another", RuntimeWarning, stacklevel=1)
    text = out.getvalue()
    assert text.count("warning: UserWarning: a group too small") == 1
    assert "warning (3 times): UserWarning: a group too small" in text and ".py:" not in text
    assert counts["UserWarning: a group too small"] == 3
    quiet = io.StringIO()
    with console_warnings(quiet=True, stream=quiet) as counts:
        warnings.warn("hidden", UserWarning, stacklevel=1)
    assert quiet.getvalue() == "" and counts["UserWarning: hidden"] == 1


@pytest.mark.parametrize("quiet", [False, True])
def test_a_study_log_has_no_escape_codes_and_quiet_prints_the_tables_only(tmp_path, capsys, quiet):
    assert main(["run", "--preset", "quick", "--output", str(tmp_path / "out"), *(["--quiet"] if quiet else [])]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "\x1b" not in err and "| attack |" in out
    if quiet:
        assert err == ""
    else:
        assert "attacks x seeds: 2/2 done" in err
        assert all(err.count(line) == 1 for line in err.splitlines() if line.startswith("warning: "))
