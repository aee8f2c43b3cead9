"""Loading policies from untrusted files: every bad input is a PolicyError that says what is
wrong (and, from a file, names it); nothing is coerced silently."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autocompress.policies import Policy, PolicyError, Pruning, Sparsity

VALID = {
    "default": {
        "quantization": {
            "weights": {"bits": 8, "symmetric": True, "per_channel": True},
            "activations": {"bits": 8},
        },
        "pruning": {"ratio": 0.5, "criterion": "l2"},
    },
    "overrides": {"fc": {"quantization": None, "sparsity": {"level": 0.5}}},
    "pinned": ["conv1"],
}


def test_the_valid_policy_loads_and_round_trips():
    policy = Policy.from_json(json.dumps(VALID))
    assert policy.default.pruning == Pruning(ratio=0.5, criterion="l2")
    assert policy.overrides["fc"].sparsity == Sparsity(level=0.5) and policy.pinned == ("conv1",)
    assert Policy.from_json(policy.to_json()) == policy
    whole = Policy.from_json(json.dumps({**VALID, "default": {"pruning": {"ratio": 0}}}))
    assert whole.default.pruning.ratio == 0.0  # an integer is a fine number


@pytest.mark.parametrize(
    "field, value",
    [
        (("default", "quantization", "weights", "bits"), "8"),
        (("default", "quantization", "weights", "bits"), 8.0),
        (("default", "quantization", "weights", "bits"), True),
        (("default", "quantization", "weights", "symmetric"), "yes"),
        (("default", "quantization", "weights", "symmetric"), 1),
        (("default", "pruning", "ratio"), "0.5"),
        (("overrides", "fc", "sparsity", "level"), "0.5"),
        (("version",), 1.0),
        (("version",), True),
        (("version",), "1"),
    ],
)
def test_no_value_is_coerced(field, value):
    data = json.loads(json.dumps(VALID))
    target = data
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    with pytest.raises(PolicyError, match=field[-1]):
        Policy.from_json(json.dumps(data))


def test_a_repeated_key_is_an_error_naming_it():
    text = '{"default": {"pruning": {"ratio": 0.5, "ratio": 0.25}}}'
    with pytest.raises(PolicyError, match="'ratio' appears twice"):
        Policy.from_json(text)


def test_deep_nesting_is_a_policy_error():
    with pytest.raises(PolicyError, match="nested too deeply"):
        Policy.from_json("[" * 100_000 + "]" * 100_000)
    nested: dict = {}
    for _ in range(5000):
        nested = {"a": nested}
    with pytest.raises(PolicyError):
        Policy.from_dict({"default": nested})


def test_bad_files_are_policy_errors_naming_the_file(tmp_path):
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"pinned": ["caf\xe9"]}'.encode("latin-1"))
    with pytest.raises(PolicyError, match=r"latin1\.json: not UTF-8"):
        Policy.load(latin)
    with pytest.raises(PolicyError, match="is not a file"):
        Policy.load(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"default": ')
    with pytest.raises(PolicyError, match=r"broken\.json: policy is not valid JSON"):
        Policy.load(broken)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 300) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "default",
        "overrides",
        "pinned",
        "student",
        "distillation",
        "quantization",
        "weights",
        "activations",
        "bits",
        "symmetric",
        "per_channel",
        "range_init",
        "pruning",
        "ratio",
        "criterion",
        "sparsity",
        "level",
        "block",
        "family",
        "params",
        "format",
        "version",
        "fc",
    ]
)


def _mutate(data, path: list, value):
    """``data`` with the value at ``path`` (created where missing) replaced."""
    if not path:
        return value
    node = dict(data) if isinstance(data, dict) else {}
    node[path[0]] = _mutate(node.get(path[0]), path[1:], value)
    return node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(KEYS, min_size=1, max_size=4), value=JSON_VALUES)
def test_any_mutation_of_a_valid_policy_loads_or_is_a_policy_error(path, value):
    text = json.dumps(_mutate(VALID, path, value))
    try:
        assert isinstance(Policy.from_json(text), Policy)
    except PolicyError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_or_bytes_load_or_are_a_policy_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "policy.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        assert isinstance(Policy.load(path), Policy)
    except PolicyError as error:
        assert str(path) in str(error)
