"""The defense registry: entry-point discovery, clear errors for unknown names and broken plugins."""

from importlib import metadata

import pytest

from artmed.defenses import registry
from artmed.defenses.activation_clustering import ActivationClustering
from artmed.defenses.art_adapters import ARTActivationClustering, ARTSpectralSignatures
from artmed.defenses.spectral import SpectralSignatures

BUILTINS = {
    "spectral_signatures": SpectralSignatures,
    "activation_clustering": ActivationClustering,
    "art_spectral_signatures": ARTSpectralSignatures,
    "art_activation_clustering": ARTActivationClustering,
}


@pytest.fixture
def fake_plugins(monkeypatch):
    """Replace the installed entry points with a known set, including a broken and a wrong-type plugin."""
    points = [
        metadata.EntryPoint("spectral_signatures", "artmed.defenses.spectral:SpectralSignatures", registry.GROUP),
        metadata.EntryPoint("broken", "artmed_no_such_module_xyz:Defense", registry.GROUP),
        metadata.EntryPoint("not_a_defense", "artmed.defenses.base:group_labels", registry.GROUP),
        metadata.EntryPoint("other_group", "artmed.defenses.spectral:SpectralSignatures", "something.else"),
    ]

    def entry_points(group=None):
        return metadata.EntryPoints(ep for ep in points if group is None or ep.group == group)

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)


def test_available_lists_without_importing(fake_plugins):
    assert list(registry.available()) == ["broken", "not_a_defense", "spectral_signatures"]


def test_get_and_create(fake_plugins):
    assert registry.get("spectral_signatures") is SpectralSignatures
    defense = registry.create("spectral_signatures", eps=0.1, mode="art")
    assert isinstance(defense, SpectralSignatures) and defense.eps == 0.1 and defense.mode == "art"


def test_unknown_name_lists_installed(fake_plugins):
    with pytest.raises(ValueError, match="unknown defense 'nope'; installed defenses: broken, not_a_defense, spectral"):
        registry.get("nope")


def test_broken_plugin_reported(fake_plugins):
    with pytest.raises(ImportError, match="'broken'.*artmed_no_such_module_xyz.*failed to load"):
        registry.get("broken")
    with pytest.raises(TypeError, match="not a subclass"):
        registry.get("not_a_defense")
    classes, errors = registry.load_all()
    assert classes == {"spectral_signatures": SpectralSignatures}
    assert set(errors) == {"broken", "not_a_defense"} and "ModuleNotFoundError" in errors["broken"]


def test_builtins_registered_through_package_metadata():
    found = registry.available()
    for name, cls in BUILTINS.items():
        assert name in found, f"{name} missing from the 'artmed.defenses' entry points (pyproject / reinstall)"
        assert registry.get(name) is cls and cls.name == name
