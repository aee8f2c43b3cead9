"""The command line, end to end on the digits data with the MNIST CNN."""

import json

import pytest

from autocompress.cli import main
from policies import LayerPolicy, Policy

FAST = ["--model", "zoo:mnist_cnn", "--data", "digits", "--baseline-epochs", "2", "--epochs", "0.3", "--rounds", "2"]


def test_evaluate_prints_baseline_and_compressed(tmp_path, capsys, cnn):
    policy = Policy.quantize(8, 8, overrides={"fc": LayerPolicy()}).save(tmp_path / "p.json")
    out = tmp_path / "out"
    assert main(["evaluate", "--policy", str(policy), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in printed.splitlines() if line.startswith(("baseline ", "compressed "))}
    assert set(rows) == {"baseline", "compressed"}
    assert "fc  " in printed or "fc: float" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["compressed"]["runtime_precision"]["Convolution"] == {"u8": 3}
    assert (out / "compressed" / "model.xml").exists()


def test_demo_runs_on_small_settings(tmp_path, capsys, cnn):
    assert main(["demo", "--out", str(tmp_path), *FAST]) == 0
    printed = capsys.readouterr().out
    for name in ("fp32 (f32)", "fp32 (default)", "w8a8", "mixed_w4_w8"):
        assert any(line.startswith(name + " ") for line in printed.splitlines()), name
    assert Policy.load(tmp_path / "policy_w8a8.json") == Policy.quantize(8, 8)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ('{"default": {"quantization": {"weights": {"bits": 16}}}}', "weights.bits: Input should be less than or equal to 8"),
        ('{"overrides": {"layer1.*": {}}}', "'layer1.*' matches no compressible layer"),
    ],
)
def test_bad_policy_exits_2_with_the_reason(tmp_path, capsys, content, message, cnn):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    assert main(["evaluate", "--policy", str(path), *FAST]) == 2
    assert message in capsys.readouterr().err
