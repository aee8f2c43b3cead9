"""Tests for autocompress.zoo: shapes, FX tracing, ONNX export, registry, spec parsing, pretrained cache."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

import autocompress.zoo as zoo
from autocompress.data import make_loaders
from autocompress.training import evaluate_torch
from autocompress.zoo import MODELS, BasicBlock, MnistCNN, ResNet20, build_model, parse_model_spec, pretrained

CASES = [
    ("mnist_cnn", (1, 28, 28)),
    ("mnist_cnn", (1, 8, 8)),
    ("resnet20", (3, 32, 32)),
    ("resnet20", (1, 8, 8)),
]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name,shape", CASES)
def test_output_shape_and_fx_trace(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=7).eval()
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7)
    gm = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), out)


def test_resnet20_structure() -> None:
    model = ResNet20(in_channels=3, num_classes=10)
    assert len(_convs(model)) == 19 + 2  # 19 3x3 convs + 2 downsample 1x1 convs
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    for stage, blocks in ((model.layer1, 3), (model.layer2, 3), (model.layer3, 3)):
        assert isinstance(stage, nn.Sequential) and len(stage) == blocks
        assert all(isinstance(b, BasicBlock) for b in stage)
    assert model.layer1[0].downsample is None
    assert model.layer2[0].downsample is not None and model.layer2[0].conv1.stride == (2, 2)
    assert model.layer3[0].downsample is not None and model.layer2[1].downsample is None
    assert model.fc.in_features == 64
    # The residual add must be a plain `+` (operator.add node) for graph passes to find.
    gm = torch.fx.symbolic_trace(model)
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "add"]
    assert len(adds) == 9
    # ~0.27M parameters, the published ResNet-20 size.
    n_params = sum(p.numel() for p in model.parameters())
    assert 260_000 < n_params < 280_000
    small = ResNet20(blocks_per_stage=(1, 1, 1))
    assert len(small.layer1) == len(small.layer2) == len(small.layer3) == 1


def test_width_multiplier() -> None:
    m1, m2 = MnistCNN(width=1.0), MnistCNN(width=2.0)
    assert (m1.conv1.out_channels, m1.conv2.out_channels, m1.conv3.out_channels) == (32, 64, 64)
    assert (m2.conv1.out_channels, m2.conv2.out_channels, m2.conv3.out_channels) == (64, 128, 128)
    assert m2.fc.in_features == 128
    tiny = MnistCNN(width=0.001)
    assert tiny.conv1.out_channels == 1 and tiny(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    r = ResNet20(width=0.5)
    assert (r.conv1.out_channels, r.layer2[0].conv2.out_channels, r.fc.in_features) == (8, 16, 32)
    r2 = build_model("resnet20", (3, 32, 32), 10, width=2)
    assert r2.layer3[-1].conv2.out_channels == 128
    with pytest.raises(ValueError, match="width"):
        MnistCNN(width=0)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("name,shape", [("mnist_cnn", (1, 28, 28)), ("resnet20", (1, 28, 28))])
def test_onnx_export(name: str, shape: tuple[int, int, int], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=10, width=0.5).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, *shape),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["logits"]
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(3, *shape)  # batch 3 also checks the dynamic batch axis
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError) as exc:
        build_model("vgg16", (1, 28, 28), 10)
    for name in ("vgg16", *MODELS):
        assert name in str(exc.value)
    with pytest.raises(ValueError, match="depth"):
        build_model("mnist_cnn", (1, 28, 28), 10, depth=3)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mnist_cnn", (28, 28), 10)  # type: ignore[arg-type]


def test_parse_model_spec() -> None:
    assert parse_model_spec("zoo:resnet20:width=2") == ("resnet20", {"width": 2.0})
    assert parse_model_spec("zoo:mnist_cnn") == ("mnist_cnn", {})
    name, kw = parse_model_spec("zoo:resnet20:width=0.5, num_classes=3,tag=abc")
    assert name == "resnet20"
    assert kw == {"width": 0.5, "num_classes": 3, "tag": "abc"}
    assert isinstance(kw["num_classes"], int) and isinstance(kw["width"], float)
    for bad in (
        "resnet20",
        "zoo:",
        "zoo:resnet20:width",
        "zoo:resnet20:=2",
        "zoo:resnet20:w=1,w=2",
        "zoo:resnet20:width=",
        "torch:resnet20",
    ):
        with pytest.raises(ValueError, match=r"zoo:NAME\[:key=value|twice"):
            parse_model_spec(bad)
    with pytest.raises(ValueError, match="mnist_cnn"):
        parse_model_spec("zoo:nope")


def test_pretrained_trains_then_loads_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="autocompress.zoo")
    t0 = time.perf_counter()
    model = pretrained("mnist_cnn", "digits", epochs=2, cache_dir=tmp_path)
    train_s = time.perf_counter() - t0
    assert not model.training
    _, _, test = make_loaders("digits")
    acc = evaluate_torch(model, test)
    assert acc > 0.85, acc
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    name = files[0].name
    assert "mnist_cnn" in name and "digits" in name and "e2" in name and "s0" in name
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file behind
    mtime = files[0].stat().st_mtime_ns
    assert "trained" in caplog.text

    # Second call must load, never train: make training explode if it is reached.
    def no_train(*args: object, **kwargs: object) -> dict:
        raise AssertionError("pretrained() retrained despite a cache hit")

    monkeypatch.setattr(zoo, "train", no_train)
    caplog.clear()
    t0 = time.perf_counter()
    again = pretrained("mnist_cnn", "digits", epochs=2, cache_dir=tmp_path)
    load_s = time.perf_counter() - t0
    assert "loaded cached weights" in caplog.text
    assert files[0].stat().st_mtime_ns == mtime
    assert load_s < train_s
    assert not again.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    assert evaluate_torch(again, test) == acc

    # A different config must not hit the same cache entry.
    with pytest.raises(AssertionError, match="retrained"):
        pretrained("mnist_cnn", "digits", epochs=2, cache_dir=tmp_path, width=0.5)
    with pytest.raises(AssertionError, match="retrained"):
        pretrained("mnist_cnn", "digits", epochs=2, cache_dir=tmp_path, seed=1)


def test_pretrained_cache_dir_env_and_distinct_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "envcache"))
    assert zoo.default_cache_dir() == tmp_path / "envcache"
    a = pretrained("mnist_cnn", "digits", epochs=1, width=0.25)
    b = pretrained("mnist_cnn", "digits", epochs=1, width=0.25, seed=1)
    files = sorted((tmp_path / "envcache").glob("*.pt"))
    assert len(files) == 2
    # Different seeds give different weights (and determinism gives the same on reload).
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    a2 = pretrained("mnist_cnn", "digits", epochs=1, width=0.25)
    assert torch.equal(a.conv1.weight, a2.conv1.weight)


def test_pretrained_deterministic_and_corrupt_cache(tmp_path: Path) -> None:
    a = pretrained("mnist_cnn", "digits", epochs=1, width=0.25, cache_dir=tmp_path / "a")
    b = pretrained("mnist_cnn", "digits", epochs=1, width=0.25, cache_dir=tmp_path / "b")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    # A truncated cache file is ignored and rewritten rather than crashing.
    (path,) = (tmp_path / "a").glob("*.pt")
    path.write_bytes(b"garbage")
    c = pretrained("mnist_cnn", "digits", epochs=1, width=0.25, cache_dir=tmp_path / "a")
    torch.testing.assert_close(c.conv1.weight, a.conv1.weight, rtol=0, atol=0)
    assert path.stat().st_size > 100


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resnet20"):
        pretrained("nope", "digits", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="mnist5k"):
        pretrained("mnist_cnn", "imagenet", cache_dir=tmp_path)
    assert not os.listdir(tmp_path)
