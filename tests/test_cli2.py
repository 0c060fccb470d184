"""The CLI's usage errors, ``--version``, "did you mean" hints and the lazy ``artmed defenses`` listing."""

import inspect
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

from artmed.defenses import registry
from artmed.defenses.spectral import SpectralSignatures
from artmed.evaluations.cli import main
from artmed.suggest import did_you_mean, did_you_mean_each


def test_a_bad_option_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: artmed run ") and "--preset" in err
    assert "artmed run: error: unrecognized arguments: --bogus" in err


def test_version_comes_from_the_installed_metadata(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"artmed {metadata.version('artmed')}"


@pytest.mark.parametrize(
    "word, choices, hint",
    [
        ("seeed", ["seeds", "seed", "data"], " (did you mean 'seed'?)"),
        ("strp", ["strip", "scan"], " (did you mean 'strip'?)"),
        ("zzz", ["strip", "scan"], ""),
        (3, ["strip"], ""),
    ],
)
def test_did_you_mean(word, choices, hint):
    assert did_you_mean(word, choices) == hint


def test_did_you_mean_each_names_the_word_each_guess_is_for():
    assert did_you_mean_each(["sed"], ["seed", "data"]) == " (did you mean 'seed'?)"
    hint = " (did you mean 'seed' for 'sed', 'data' for 'dta'?)"
    assert did_you_mean_each(["sed", "zzz", "dta"], ["seed", "data"]) == hint
    assert did_you_mean_each(["zzz", "qqq"], ["seed", "data"]) == ""


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("seeed: 1\n", r"config: unknown key\(s\) \['seeed'\] \(did you mean 'seed'"),
        ("data: {n_trian: 10}\n", r"config\.data: unknown key\(s\) \['n_trian'\] \(did you mean 'n_train'\?\)"),
        ("defenses: [stirp]\n", r"unknown defense 'stirp' \(did you mean 'strip'\?\)"),
        ("attacks: [{attack: badmach}]\n", r"unknown attack 'badmach' \(did you mean 'badmatch'"),
        ("attacks: [{attack: badmatch, trigger: pach}]\n", r"unknown trigger 'pach' \(did you mean 'patch'\?\)"),
        (
            "attacks: [{attack: badmatch, trigger_params: {sise: 8}}]\n",
            r"unknown parameter 'sise' for trigger 'patch'; valid: \[.*\] \(did you mean 'size'\?\)",
        ),
        (
            "defenses: [{name: strip, params: {alpah: 0.5}}]\n",
            r"unknown parameter 'alpah' for strip; valid: \[.*\] \(did you mean 'alpha'\?\)",
        ),
    ],
)
def test_config_errors_suggest_the_closest_name(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "study.yaml"
    config.write_text(yaml_text)
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_registry_suggests_the_closest_defense():
    with pytest.raises(ValueError, match=r"unknown defense 'spectre_' \(did you mean 'spectre'\?\)"):
        registry.get("spectre_")


def test_listing_reads_the_source_without_importing_torch():
    code = (
        "import sys; from artmed.evaluations.cli import main; code = main(['defenses']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in registry.available():
        assert re.search(rf"^{name}\s+(detection|mitigation|input|model)\s+artmed\.defenses\.", out, re.MULTILINE)
    # The first paragraph in full (this one spans two source lines), then every parameter with its default.
    text = " ".join(out.split())
    assert (
        "made reproducible by seeding NumPy's global generator (which scikit-learn's KMeans draws from) around "
        "the call."
    ) in text
    assert "parameters: n_superimpose=100, superimpose='add'," in text
    assert "grouping='finding'" in text and "classifier" not in text


def test_static_descriptions_match_the_loaded_classes():
    infos, errors = registry.describe_all()
    assert not errors
    for info in infos:
        cls = registry.get(info.name)
        loaded = registry._describe_loaded(info.name, cls)
        assert (info.kind, info.target, info.doc) == (loaded.kind, loaded.target, loaded.doc), info.name
        assert list(info.params) == list(loaded.params) == [p for p in cls.param_names() if p not in registry.DATA_ARGS]
        for name, default in info.params.items():
            if default and not re.search(r"[A-Za-z_]\w*\(|^[A-Z_]+$", default):  # a literal, not an expression
                assert default == loaded.params[name], (info.name, name)


class Inherited(SpectralSignatures):
    """A plugin whose kind and ``__init__`` come from a class in another module: it is imported to describe it."""


def test_a_plugin_the_source_cannot_describe_is_imported(monkeypatch):
    ep = metadata.EntryPoint("inherited", f"{__name__}:Inherited", registry.GROUP)
    assert registry._describe_static("inherited", ep) is None
    monkeypatch.setattr(registry, "available", lambda: {"inherited": ep})
    (info,), errors = registry.describe_all()
    assert not errors and info.kind == "detection" and info.doc == inspect.getdoc(Inherited)
    assert info.target == f"{__name__}.Inherited"
    assert list(info.params) == [
        p for p in inspect.signature(SpectralSignatures.__init__).parameters if p not in ("self", *registry.DATA_ARGS)
    ]


def test_import_option_lists_a_plugin_that_fails_to_import_as_broken(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text(
        'import no_such_module_anywhere\n\n\nclass Broken:\n    """Reads fine."""\n\n    kind = "detection"\n\n'
        "    def __init__(self, share: float = 0.1) -> None:\n        self.share = share\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint("broken", "broken_plugin:Broken", registry.GROUP)
    monkeypatch.setattr(registry, "available", lambda: {"broken": ep})
    assert main(["defenses"]) == 0
    assert re.search(
        r"^broken\s+detection\s+broken_plugin\.Broken\n\s+Reads fine\.\n\s+parameters: share=0\.1",
        capsys.readouterr().out,
        re.MULTILINE,
    )
    assert main(["defenses", "--import"]) == 0
    assert re.search(
        r"^broken\s+BROKEN\s+defense plugin 'broken' .*No module named 'no_such_module_anywhere'",
        capsys.readouterr().out,
        re.MULTILINE,
    )


def test_the_package_version_is_the_distributions():
    import tomllib
    from pathlib import Path

    import artmed

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert artmed.__version__ == metadata.version("artmed") == pyproject["project"]["version"]
