import dataclasses
import json

import pytest

from autocompress.policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "fc"]


def mixed_policy() -> Policy:
    four = LayerPolicy(
        quantization=LayerQuant(weights=TensorQuant(bits=4, per_channel=True, range_init="mse"))
    )
    return Policy(
        default=Policy.quantize(8, 8).default,
        overrides={
            "layer*": four,
            "layer1.0.conv2": LayerPolicy(),
            "layer2.*": Policy.quantize(8, 8).default,
        },
    )


def test_json_round_trip_is_exact(tmp_path):
    policy = mixed_policy()
    assert Policy.from_json(policy.to_json()) == policy
    path = policy.save(tmp_path / "p.json")
    assert Policy.load(path) == policy
    data = json.loads(path.read_text())
    assert data["format"] == "autocompress.policy" and data["version"] == 1


def test_policies_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().default = LayerPolicy()  # type: ignore[misc]


def test_exact_name_beats_patterns_and_later_patterns_win():
    resolved = mixed_policy().resolve(LAYERS)
    assert resolved["conv1"].quantization.weights.bits == 8
    assert resolved["layer1.0.conv1"].quantization.weights.bits == 4
    assert resolved["layer1.0.conv2"].quantization is None  # exact name
    assert resolved["layer2.0.conv1"].quantization.weights.bits == 8  # later pattern
    assert resolved["fc"].quantization.weights.bits == 8


def test_override_matching_no_layer_names_it_and_lists_layers():
    policy = Policy(overrides={"layer9.*": LayerPolicy()})
    with pytest.raises(
        PolicyError, match=r"'layer9\.\*' matches no compressible layer.*conv1, layer1\.0\.conv1"
    ):
        policy.resolve(LAYERS)


@pytest.mark.parametrize(
    "quantization, expected",
    [
        (
            {"weights": {"bits": 9}},
            r"default\.quantization\.weights\.bits: Input should be less than or equal to 8",
        ),
        ({"weights": {"bits": 0}}, r"weights\.bits: Input should be greater than or equal to 1"),
        ({"activations": {"bitz": 4}}, r"activations\.bitz: unknown field"),
        ({"weights": {"range_init": "kl"}}, r"range_init: Input should be 'minmax', 'percentile' or 'mse'"),
        ({"weights": {"bits": 1}}, r"bits=1 needs binarize"),
        ({"weights": {"bits": 1, "binarize": "scale_threshold"}}, r"is for activations; weights allow"),
        ({"activations": {"bits": 1, "binarize": "xnor"}}, r"is for weights; activations allow"),
        ({"weights": {"bits": 4, "binarize": "xnor"}}, r"binarize='xnor' needs bits=1"),
        ({"weights": {"percentile": 30}}, r"percentile: Input should be greater than 50"),
    ],
)
def test_invalid_fields_are_named_with_what_is_allowed(quantization, expected):
    with pytest.raises(PolicyError, match=expected):
        Policy.from_dict({"default": {"quantization": quantization}})


def test_bad_documents_get_clear_errors(tmp_path):
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.from_json("{nope")
    with pytest.raises(PolicyError, match="version 7 is not supported"):
        Policy.from_dict({"version": 7})
    with pytest.raises(PolicyError, match="not an autocompress policy"):
        Policy.from_dict({"format": "other"})
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": {"quantization": {"weights": {"bits": 12}}}}))
    with pytest.raises(PolicyError, match=r"bad\.json: invalid policy"):
        Policy.load(bad)


def test_describe_lists_each_layer_as_resolved():
    text = mixed_policy().describe(LAYERS)
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert "W[4b sym per-channel mse]" in lines["layer1.0.conv1"]
    assert lines["layer1.0.conv2"].endswith("float")
    assert "W[8b" in lines["fc"]


def test_pruning_sparsity_and_student_round_trip_and_validate():
    from autocompress.policies import Distillation, Pruning, Sparsity, Student

    policy = Policy(
        default=LayerPolicy(
            pruning=Pruning(ratio=0.5, criterion="taylor"),
            sparsity=Sparsity(level=0.9, schedule="exponential"),
        ),
        overrides={"fc": LayerPolicy(sparsity=Sparsity(level=0.5, block=(4, 4)))},
        pinned=("conv1",),
        student=Student(family="resnet", params={"width": [0.5, 0.5, 0.25], "blocks": [1, 1, 1]}),
        distillation=Distillation(temperature=2.0, alpha=0.7),
    )
    assert Policy.from_json(policy.to_json()) == policy
    text = policy.describe()
    assert "student: resnet(width=[0.5, 0.5, 0.25], blocks=[1, 1, 1]), KD T=2 alpha=0.7" in text
    assert "prune 50% taylor, sparse 90% magnitude" in text and "pinned: conv1" in text
    for bad, message in [
        ({"default": {"pruning": {"ratio": 1.0}}}, "pruning.ratio: Input should be less than 1"),
        (
            {"default": {"pruning": {"ratio": -0.1}}},
            "pruning.ratio: Input should be greater than or equal to 0",
        ),
        (
            {"default": {"pruning": {"ratio": 0.5, "criterion": "random"}}},
            "pruning.criterion: Input should be 'l1'",
        ),
        (
            {"default": {"sparsity": {"level": 0.5, "method": "l0", "block": [2, 2]}}},
            "block sparsity needs method='magnitude'",
        ),
        ({"distillation": {"temperature": 0}}, "distillation.temperature: Input should be greater than 0"),
        (
            {"student": {"family": "resnet", "ensemble": 0}},
            "student.ensemble: Input should be greater than or equal to 1",
        ),
    ]:
        with pytest.raises(PolicyError, match=message):
            Policy.from_dict(bad)
