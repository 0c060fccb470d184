"""The one parameter contract (artmed.params) of triggers and defenses: get_params / set_params round trips, unknown
names refused by name, a refused value leaving every old value in place, a new value used."""

import json
import re

import numpy as np
import pytest

from artmed.attacks.triggers import TRIGGERS, BlendedTrigger, FourierTrigger, PatchTrigger
from artmed.defenses import EvaluationContext, registry
from artmed.defenses.art_api import ART_DATA
from artmed.defenses.spectral import SpectralSignatures
from artmed.evaluations.store import to_jsonable
from artmed.params import Bool, Check, Choice, Int, Items, OrNone, Params, Real, Text, check

DEFENSES = sorted(registry.available())

GOOD = {
    "activation_clustering": {"n_clusters": 3, "size_threshold": 0.2},
    "art_activation_clustering": {"nb_dims": 5, "reduce": "FastICA"},
    "art_spectral_signatures": {"eps_multiplier": 2.0, "batch_size": 32},
    "cleanclip": {"steps": 3, "word_dropout": 0.2},
    "decree": {"epochs": 2, "n_images": 8},
    "fine_pruning": {"max_prune": 0.5, "finetune_steps": 2},
    "scan": {"n_init": 2, "threshold": 3.0},
    "spectral_signatures": {"eps": 0.5, "mode": "art"},
    "spectre": {"k": 2, "alpha": 2.0},
    "strip": {"n_superimpose": 5, "alpha": 0.25},
}
"""Per registered defense: new values it accepts (two, so a refusal must restore more than the refused one)."""

TRIGGER_GOOD = {
    "patch": {"size": 5, "corner": "top_left"},
    "fourier": {"alpha": 0.5, "seed": 7},
    "blended": {"alpha": 0.5, "seed": 3},
}


def bad_values(rule):
    """Values ``rule`` refuses: wrong types, NaN, and just outside its bounds."""
    if isinstance(rule, OrNone):
        return bad_values(rule.rule)
    if isinstance(rule, Int):
        out = [True, 2.5, "3"]
        out += [rule.low - 1] if rule.low is not None else []
        out += [rule.high + 1] if rule.high is not None else []
    elif isinstance(rule, Real):
        out = [float("nan"), float("inf"), True, "0.5"]
        if rule.low is not None:
            out.append(rule.low if rule.bounds[0] == "(" else rule.low - 1)
        if rule.high is not None:
            out.append(rule.high if rule.bounds[1] == ")" else rule.high + 1)
    elif isinstance(rule, Choice):
        out = ["no-such-option", 1]
    elif isinstance(rule, Bool):
        out = ["yes", 1]
    elif isinstance(rule, Text):
        out = ["", 3]
    elif isinstance(rule, Items):
        out = [(0,), "ab", tuple(bad_values(rule.rule)[:1]) * rule.length]
    else:
        out = []
    return out


def ruled(classes):
    return [(cls, name, rule) for cls in classes for name, rule in cls.param_rules.items()]


def defense_class(name):
    return registry.get(name)


# ------------------------------------------------------------------ the module


def test_rules_accept_and_word_what_they_want():
    assert Int(1).accepts(3) and Int(1).accepts(np.int64(3)) and not Int(1).accepts(0)
    assert not Int().accepts(True) and not Int().accepts(2.0) and Int(0, 5).what == "an integer in [0, 5]"
    assert Int(4).what == "an integer >= 4"
    half_open = Real(0, 1, "(]")
    assert half_open.accepts(1.0) and not half_open.accepts(0.0) and half_open.accepts(np.float32(0.5))
    assert not Real().accepts(float("nan")) and not Real().accepts(np.inf) and not Real().accepts(True)
    assert Real(0, 1, "()").what == "a number in (0, 1)" and Real(0.0, None, "()").what == "a positive number"
    assert Real(1.0, None, "()").what == "a number > 1" and Real(0.0).what == "a number >= 0"
    assert (
        Choice(("a", None)).accepts(None)
        and not Choice((1, 2)).accepts(True)
        and not Choice(("a",)).accepts(np.array(["a"]))
    )
    assert OrNone(Int(2)).what == "an integer >= 2 or None" and OrNone(Int(2)).accepts(None)
    assert Items(Int(0), 2).accepts([1, 2]) and Items(Int(0), 2).accepts((0, np.int32(1)))
    assert not Items(Int(0), 2).accepts((1, 2, 3)) and not Items(Int(0), 2).accepts((1, -1))
    pair = Check(lambda v: v.shape == (2,), "a pair")
    assert pair.accepts(np.zeros(2)) and not pair.accepts(np.zeros(3)) and not pair.accepts(3)
    assert Bool().accepts(np.bool_(True)) and not Bool().accepts(0) and Text().accepts("x") and not Text().accepts("")
    with pytest.raises(ValueError, match="bounds"):
        Real(0, 1, "[[")


def test_check_names_the_owner_the_parameter_and_the_value():
    with pytest.raises(ValueError, match=r"^Thing size must be an integer >= 1, got 0$"):
        check("Thing", "size", 0, Int(1))
    with pytest.raises(ValueError, match=r"^PatchTrigger size must be an integer >= 1, got 0$"):
        check(PatchTrigger, "size", 0, Int(1))
    with pytest.raises(ValueError, match=r"^eps must be a number in \(0, 1\], got 7 \(SpectralSignatures\)$"):
        SpectralSignatures(eps=7)


class Toy(Params):
    param_rules = {"a": Int(0), "b": Real(0, 1)}

    def __init__(self, a=1, b=0.5, *args, **kwargs):
        self.a, self.b = a, b
        self.changed = 0
        self._check_params()

    def _check_params(self):
        self.check_rules()
        if self.a == 3 and self.b == 1:
            raise RuntimeError("a=3 with b=1")

    def _params_changed(self):
        self.changed += 1


def test_params_mixin_is_all_or_nothing():
    toy = Toy()
    assert Toy.param_names() == ["a", "b"] and toy.get_params() == {"a": 1, "b": 0.5}
    toy.set_params(a=3)
    assert toy.get_params() == {"a": 3, "b": 0.5} and toy.changed == 1
    with pytest.raises(ValueError, match=r"Toy: unknown parameter\(s\) \['c', 'd'\]; valid: \['a', 'b'\]"):
        toy.set_params(a=0, c=1, d=2)
    with pytest.raises(ValueError, match="b must be"):
        toy.set_params(a=0, b=2)
    with pytest.raises(RuntimeError):  # whatever _check_params raises, the values are restored
        toy.set_params(b=1)
    assert toy.get_params() == {"a": 3, "b": 0.5} and toy.changed == 1


# ------------------------------------------------------------------ triggers


def test_trigger_param_keys_unchanged():
    assert list(PatchTrigger().get_params()) == ["size", "relative_size", "colour", "corner", "inset", "native_size"]
    assert list(FourierTrigger().get_params()) == ["window", "alpha", "seed", "reference", "unnormalized"]
    assert list(BlendedTrigger().get_params()) == ["alpha", "seed", "pattern"]


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_trigger_round_trip_and_unknown_names(name):
    trigger = TRIGGERS[name]()
    params = trigger.get_params()
    assert TRIGGERS[name](**params).get_params() == params
    trigger.set_params(**params)
    assert trigger.get_params() == params
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sise'\]"):
        trigger.set_params(sise=3, **TRIGGER_GOOD[name])
    assert trigger.get_params() == params
    trigger.set_params(**TRIGGER_GOOD[name])
    assert trigger.get_params() == {**params, **TRIGGER_GOOD[name]}
    json.dumps(to_jsonable(trigger.get_params()))


@pytest.mark.parametrize("cls, name, rule", ruled(TRIGGERS.values()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_trigger_bad_value_leaves_every_value(cls, name, rule):
    key = cls.name
    trigger = cls()
    before = trigger.get_params()
    for bad in bad_values(rule):
        assert not rule.accepts(bad)
        with pytest.raises(ValueError, match=rf"^{cls.__name__} {name} must be"):
            cls(**{name: bad})
        with pytest.raises(ValueError, match=rf"{cls.__name__} {name} must be .*got {re.escape(repr(bad))}"):
            trigger.set_params(**{**TRIGGER_GOOD[key], name: bad})
        assert trigger.get_params() == before


def test_new_trigger_values_are_used():
    x = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 1, 32, 32)).astype(np.float32)
    patch = PatchTrigger(size=3)
    assert patch.mask((32, 32)).sum() == 9
    patch.set_params(size=5, inset=[1, 2])
    assert patch.mask((32, 32)).sum() == 25 and patch.mask((32, 32))[-7:-2, -6:-1].all()
    np.testing.assert_array_equal(patch(x), PatchTrigger(size=5, inset=(1, 2))(x))
    for cls, new in ((FourierTrigger, {"seed": 7, "alpha": 0.5}), (BlendedTrigger, {"seed": 3, "alpha": 0.5})):
        trigger = cls()
        first = trigger(x)  # caches the reference / pattern drawn for seed 0
        trigger.set_params(**new)
        out = trigger(x)
        np.testing.assert_array_equal(out, cls(**new)(x))
        assert not np.array_equal(out, first)


def test_patch_refusal_across_parameters_restores_all():
    patch = PatchTrigger(size=4)
    with pytest.raises(ValueError, match="does not fit"):
        patch.set_params(size=32, inset=(100, 1), native_size=128)
    assert patch.get_params() == PatchTrigger(size=4).get_params()
    fourier = FourierTrigger()
    with pytest.raises(ValueError, match="FourierTrigger reference"):
        fourier.set_params(alpha=0.5, reference=np.full((4, 4), 3.0))
    assert fourier.alpha == 0.1 and fourier.reference is None


def test_trigger_values_stored_unchanged_and_computed_as_before():
    inset = [1, 1]
    patch = PatchTrigger(size=np.int64(4), inset=inset, colour=np.float32(0.5))
    assert patch.get_params()["inset"] is inset and type(patch.size) is np.int64
    assert json.loads(json.dumps(to_jsonable(patch.get_params())))["inset"] == [1, 1]
    x = np.random.default_rng(1).uniform(0.2, 0.8, size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(patch(x), PatchTrigger(size=4, inset=(1, 1), colour=0.5)(x))
    np.testing.assert_array_equal(
        BlendedTrigger(alpha=np.float64(0.1), seed=np.int64(2))(x), BlendedTrigger(alpha=0.1, seed=2)(x)
    )
    np.testing.assert_array_equal(
        FourierTrigger(alpha=np.float32(0.5), window=np.float64(0.2))(x),
        FourierTrigger(alpha=float(np.float32(0.5)), window=0.2)(x),
    )
    reference = np.full((8, 8), 0.5, dtype=np.float32)
    assert FourierTrigger(reference=reference).reference is reference


# ------------------------------------------------------------------ defenses


def test_every_registered_defense_has_good_values():
    assert sorted(GOOD) == DEFENSES


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_round_trip_and_unknown_names(name):
    cls = defense_class(name)
    defense = cls()
    params = defense.get_params()
    assert list(params) == [p for p in cls.param_names() if p not in ART_DATA]
    assert set(cls.param_rules) <= set(params), "every rule is an __init__ parameter"
    assert cls(**params).get_params() == params
    defense.set_params(**params)
    assert defense.get_params() == params
    with pytest.raises(ValueError, match=rf"{cls.__name__}: unknown parameter\(s\) \['bogus'\]"):
        defense.set_params(bogus=1, **GOOD[name])
    assert defense.get_params() == params
    defense.set_params(**GOOD[name])
    assert defense.get_params() == {**params, **GOOD[name]} == cls(**{**params, **GOOD[name]}).get_params()
    json.dumps(to_jsonable(defense.get_params()))


@pytest.mark.parametrize(
    "cls, name, rule", ruled(defense_class(n) for n in DEFENSES), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_defense_bad_value_leaves_every_value(cls, name, rule):
    defense = cls()
    before = defense.get_params()
    for bad in bad_values(rule):
        assert not rule.accepts(bad)
        with pytest.raises(ValueError, match=rf"^{name} must be .*\({cls.__name__}\)$"):
            cls(**{name: bad})
        with pytest.raises(ValueError, match=rf"^{name} must be .*got {re.escape(repr(bad))} \({cls.__name__}\)$"):
            defense.set_params(**{**GOOD[cls.name], name: bad})
        assert defense.get_params() == before


def test_new_defense_values_are_used():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 16)).astype(np.float32)
    y = np.repeat(np.eye(14)[:3], 100, axis=0)
    context = EvaluationContext(y_train=y, feature_cache={"image_pooled": feats})
    defense = SpectralSignatures(eps=0.1, removal_share=1.0)
    assert defense.run(context).flags.sum() == 30
    defense.set_params(eps=0.2)
    assert defense.run(context).flags.sum() == 60
    with pytest.raises(ValueError, match="removal_share"):
        defense.set_params(eps=0.3, removal_share=0)
    assert defense.run(context).flags.sum() == 60


def test_attacks_share_the_all_or_nothing_set_params():
    """BadMatch and BadDist: ART's ``attack_params`` are their parameters; a refused value restores every one."""
    from artmed import MedCLIPEstimator
    from artmed.attacks.poisoning import BadDist, BadMatch
    from artmed.attacks.triggers import PatchTrigger

    bad_match = BadMatch(PatchTrigger())
    assert set(bad_match.get_params()) == set(BadMatch.attack_params)
    with pytest.raises(ValueError, match="percent_poison must be in"):
        bad_match.set_params(seed=3, percent_poison=2.0)
    assert (bad_match.seed, bad_match.percent_poison) == (0, 0.01)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nope'\]"):
        bad_match.set_params(nope=1)
    bad_match.set_params(seed=3, percent_poison=0.05)
    assert bad_match.get_params()["seed"] == 3 and bad_match.percent_poison == 0.05

    bad_dist = BadDist(MedCLIPEstimator.tiny({"a": ["a"], "b": ["b"]}, image_size=32), PatchTrigger(), verbose=False)
    assert set(bad_dist.get_params()) == set(BadDist.attack_params)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        bad_dist.set_params(steps=5, lr=-1.0)
    assert (bad_dist.steps, bad_dist.lr) == (None, 1e-4)
