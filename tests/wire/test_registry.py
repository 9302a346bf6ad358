"""btard_wire.registry.Registry: one registry type for aggregators, attacks, tasks, policies, fragments."""

from __future__ import annotations

import pickle

import pytest

from btard_wire.errors import CodedError
from btard_wire.registry import Registry, UnknownName


def _rules() -> Registry:
    rules: Registry = Registry("aggregator")

    @rules.register("mean")
    def mean(xs):
        return sum(xs) / len(xs)

    rules.register("max", max)
    return rules


def test_it_registers_by_decorator_and_by_call_and_returns_the_item():
    rules = _rules()
    assert rules["mean"]([1, 3]) == 2
    assert rules["max"] is max
    assert rules.register("min", min) is min


def test_it_takes_the_items_own_name_when_none_is_given():
    attacks: Registry = Registry("attack")

    @attacks.register
    class SignFlip:
        name = "sign_flip"

    @attacks.register()
    class Silent:
        name = "silent"

    assert attacks["sign_flip"] is SignFlip and attacks["silent"] is Silent
    with pytest.raises(TypeError, match="has no string 'name'"):
        attacks.register(object())


def test_an_unknown_name_raises_one_coded_error_that_is_a_key_error_and_lists_the_known_names():
    rules = _rules()
    with pytest.raises(UnknownName) as caught:
        rules["krum"]
    error = caught.value
    assert isinstance(error, CodedError) and isinstance(error, KeyError) and isinstance(error, ValueError)
    assert error.code == "unknown_name" and error.kind == "aggregator" and error.name == "krum"
    assert str(error) == "unknown aggregator 'krum'; known: max, mean"  # not KeyError's quoted repr
    assert error.known == ["max", "mean"]
    with pytest.raises(KeyError):  # what callers written against a dict catch
        rules["krum"]


def test_unhashable_or_missing_names_are_unknown_not_a_crash():
    rules = _rules()
    with pytest.raises(UnknownName):
        rules[["mean"]]  # type: ignore[index]
    assert ["mean"] not in rules
    assert rules.get("krum") is None and rules.get("krum", 7) == 7
    with pytest.raises(UnknownName):
        del rules["krum"]


def test_it_behaves_like_the_dict_it_replaces():
    rules = _rules()
    assert "mean" in rules and "krum" not in rules
    assert sorted(rules) == ["max", "mean"] and list(rules) == ["mean", "max"]  # insertion order kept
    assert len(rules) == 2 and dict(rules) == {"mean": rules["mean"], "max": max}
    assert [name for name, _ in rules.items()] == ["mean", "max"]
    rules.update({"min": min})
    rules["max"] = min  # plain assignment replaces, as a dict does (monkeypatch.setitem relies on it)
    assert rules["max"] is min and rules.copy() == {"mean": rules["mean"], "max": min, "min": min}
    del rules["min"]
    assert "min" not in rules


def test_register_refuses_a_second_item_under_a_taken_name_but_accepts_the_same_one_again():
    rules = _rules()
    assert rules.register("max", max) is max
    with pytest.raises(ValueError, match="'max' is already registered"):
        rules.register("max", min)
    assert rules["max"] is max


def test_monkeypatch_setitem_is_undone(monkeypatch):
    rules = _rules()
    with monkeypatch.context() as m:
        m.setitem(rules, "max", min)
        m.setitem(rules, "spy", len)
        assert rules["max"] is min and "spy" in rules
    assert rules["max"] is max and "spy" not in rules


def test_a_subclass_can_find_its_items_afresh_on_every_access():
    found = {"a": 1}

    class Discovered(Registry):
        def _entries(self):
            return {**found, **self._items}

    reg = Discovered("task")
    assert sorted(reg) == ["a"]
    found["b"] = 2  # "installed since start-up"
    assert reg["b"] == 2 and "b" in reg and len(reg) == 2
    with pytest.raises(UnknownName, match="known: a, b"):
        reg["c"]


def test_the_error_survives_pickling_with_its_code():
    error = pickle.loads(pickle.dumps(_rules().unknown("krum")))
    assert isinstance(error, UnknownName) and error.code == "unknown_name" and error.known == ["max", "mean"]
    assert str(error) == "unknown aggregator 'krum'; known: max, mean"
