"""Training passes on a device= with optional autocast; export and measurement stay on the CPU
(issue 15). This machine has no GPU: CUDA is checked by benchmarks/gpu_check.py; here the
device plumbing runs on the CPU, bf16 autocast for real, and the errors are checked."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from torch import nn

import autocompress
from autocompress import Finetune, Policy, Target, TrainStage, apply_policy
from autocompress.devices import Accelerator, placed, to_device
from autocompress.export import export_onnx
from autocompress.policies import Distillation, LayerPolicy, LayerQuant, Pruning, Sparsity, Student
from autocompress.training import evaluate_torch, train


def _no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _on_cpu_in_float32(module: nn.Module) -> None:
    tensors = [*module.parameters(), *module.buffers()]
    assert {t.device.type for t in tensors} == {"cpu"}
    assert {p.dtype for p in module.parameters()} == {torch.float32}


# -- values and errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, expected",
    [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), (torch.device("cpu"), "cpu"), ("auto", "auto")],
)
def test_devices_are_normalised_to_strings(device, expected):
    assert Accelerator(device).device == expected


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "", 3, None, torch.device("meta")])
def test_a_bad_device_names_the_parameter_the_value_and_the_allowed_ones(device):
    with pytest.raises(ValueError) as error:
        Accelerator(device)
    message = str(error.value)
    assert message.startswith(f"device={device!r} is not a device; allowed: ")
    assert '"auto", "cpu", "cuda", "cuda:N" or a torch.device' in message


@pytest.mark.parametrize("autocast", ["int8", "BF16", "float16", True, 16])
def test_a_bad_autocast_names_the_parameter_the_value_and_the_allowed_ones(autocast):
    with pytest.raises(ValueError, match=r"autocast=.* is not a precision; allowed: None, 'bf16', 'fp16'"):
        Accelerator("cpu", autocast)


def test_fp16_on_the_cpu_is_refused_naming_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="runs on CUDA only.*use autocast='bf16' \\(or None"):
        Accelerator("cpu", "fp16")
    _no_cuda(monkeypatch)
    auto = Accelerator("auto", "fp16")  # may be CUDA elsewhere: refused where it resolves to the CPU
    with pytest.raises(ValueError, match="use autocast='bf16'"):
        _ = auto.torch_device


def test_cuda_without_a_cuda_device_says_so_and_what_to_use(monkeypatch, digits_loaders, cnn):
    _no_cuda(monkeypatch)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match='no CUDA device is visible.*use device="cpu" or device="auto"'):
            _ = Accelerator(device).torch_device
    # The public entry points say it before any work.
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        apply_policy(cnn, Policy.quantize(8, 8), digits_loaders[0], device="cuda")
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        train(nn.Linear(64, 10), digits_loaders[0], device="cuda")
    assert Accelerator("auto").torch_device == torch.device("cpu")


def test_a_cuda_index_beyond_the_visible_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert Accelerator("cuda:0").torch_device == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\) are visible \(cuda:0..cuda:0\)"):
        _ = Accelerator("cuda:1").torch_device


def test_to_device_moves_tensors_in_nested_batches():
    Pair = collections.namedtuple("Pair", "inputs targets")
    batch = {"a": (torch.ones(2), [torch.zeros(1), "text"]), "b": Pair(torch.ones(1), 3)}
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list)
    assert isinstance(moved["b"], Pair) and moved["b"].targets == 3 and moved["a"][1][1] == "text"
    assert torch.equal(moved["a"][0], torch.ones(2))


def test_placed_moves_back_when_the_block_raises():
    class Recording(nn.Linear):
        def to(self, device):  # records the moves (no CUDA here to move to)
            moves.append(str(device))
            return self

    moves: list[str] = []
    module = Recording(2, 2)
    with pytest.raises(RuntimeError, match="boom"), placed(torch.device("cuda"), module, None):
        assert moves == ["cuda"]
        raise RuntimeError("boom")
    assert moves == ["cuda", "cpu"]
    with placed(torch.device("cpu"), module):  # already there: not moved
        pass
    assert moves == ["cuda", "cpu"]


# -- training on the device -----------------------------------------------------------------------


def test_train_with_bf16_autocast_on_the_cpu(digits_loaders, tmp_path):
    loader, _, test = digits_loaders
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    seen = []
    original = model.forward

    def forward(x):
        out = original(x)
        seen.append(out.dtype)
        return out

    model.forward = forward
    stats = train(model, loader, epochs=2, lr=1e-2, device="cpu", autocast="bf16")
    assert math.isfinite(stats["final_loss"]) and stats["final_loss"] < 1.0
    assert set(seen) == {torch.bfloat16}  # the forward ran under autocast
    _on_cpu_in_float32(model)
    assert evaluate_torch(model, test) > 0.8
    del model.forward
    export_onnx(model, (1, 1, 8, 8), tmp_path / "model.onnx")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_apply_policy_on_a_device_gives_a_working_model_that_exports(cnn, digits_loaders, tmp_path, device):
    train_loader, _, test = digits_loaders
    compressed = apply_policy(
        cnn, Policy.quantize(8, 8), train_loader, finetune=Finetune(epochs=0.5), device=device
    )
    _on_cpu_in_float32(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.9
    export_onnx(compressed.module, (1, *compressed.input_shape), tmp_path / "model.onnx")


def test_qat_with_bf16_autocast_trains_and_exports(cnn, digits_loaders, tmp_path):
    train_loader, _, test = digits_loaders
    compressed = apply_policy(
        cnn, Policy.quantize(8, 8), train_loader, finetune=Finetune(epochs=0.5), device="cpu", autocast="bf16"
    )
    assert math.isfinite(compressed.history["finetune"]["final_loss"])
    _on_cpu_in_float32(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.9
    export_onnx(compressed.module, (1, *compressed.input_shape), tmp_path / "model.onnx")


def test_distillation_with_a_student_under_bf16(cnn, digits_loaders, tmp_path):
    """The teacher runs inside the extra loss: it goes to the device with the student and
    comes back; KD is kept throughout (QAT learns from the teacher too)."""
    train_loader, _, test = digits_loaders
    teacher_before = {k: v.clone() for k, v in cnn.state_dict().items()}
    policy = Policy(
        student=Student(family="mnist_cnn", params={"width": 0.5}),
        distillation=Distillation(throughout=True),
        default=LayerPolicy(quantization=LayerQuant()),
    )
    compressed = apply_policy(
        cnn,
        policy,
        train_loader,
        finetune=Finetune(distill_epochs=1, epochs=0.3),
        device="cpu",
        autocast="bf16",
    )
    assert math.isfinite(compressed.history["distillation"]["final_loss"])
    _on_cpu_in_float32(compressed.module)
    _on_cpu_in_float32(cnn)
    assert all(torch.equal(teacher_before[k], v) for k, v in cnn.state_dict().items())
    assert evaluate_torch(compressed.module, test) > 0.6
    export_onnx(compressed.module, (1, *compressed.input_shape), tmp_path / "model.onnx")


@pytest.mark.parametrize("method", ["magnitude", "l0"])
def test_pruning_recovery_and_sparsity_under_bf16(cnn, digits_loaders, tmp_path, method):
    train_loader, _, test = digits_loaders
    policy = Policy(
        default=LayerPolicy(
            quantization=LayerQuant(),
            pruning=Pruning(ratio=0.25),
            sparsity=Sparsity(level=0.5, method=method),
        )
    )
    compressed = apply_policy(
        cnn,
        policy,
        train_loader,
        finetune=Finetune(recovery_epochs=0.5, epochs=1),
        device="cpu",
        autocast="bf16",
    )
    assert compressed.history["pruning"]
    assert all(abs(level - 0.5) < 0.01 for level in compressed.history["sparsity"].values())
    _on_cpu_in_float32(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.6  # 0.8 (magnitude), 0.95 (l0) in float32
    export_onnx(compressed.module, (1, *compressed.input_shape), tmp_path / "model.onnx")


class DeviceLoop:
    """A user's loop that trains where the stage says, under the stage's autocast."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, torch.device, str | None, torch.dtype]] = []

    def __call__(self, stage: TrainStage) -> None:
        optimizer = torch.optim.Adam(stage.model.parameters(), lr=1e-3)
        parameter = next(stage.model.parameters())
        for step, batch in zip(range(stage.total_steps), stage.loader):
            inputs, targets = to_device(batch, stage.device)
            stage.before_step(step)
            with stage.autocast_context():
                outputs = stage.model(inputs)
                loss = stage.loss(inputs, outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.seen.append((stage.name, stage.device, stage.autocast, outputs.dtype))
        assert parameter.device == stage.device


def test_a_train_fn_sees_the_device_and_autocast(cnn, digits_loaders):
    loop = DeviceLoop()
    policy = Policy(
        student=Student(family="mnist_cnn", params={"width": 0.5}),
        default=LayerPolicy(quantization=LayerQuant()),
    )
    compressed = apply_policy(
        cnn,
        policy,
        digits_loaders[0],
        finetune=Finetune(distill_epochs=0.3, epochs=0.3),
        train_fn=loop,
        device="auto",
        autocast="bf16",
    )
    cpu = torch.device("cpu")
    assert loop.seen == [
        ("distillation", cpu, "bf16", torch.bfloat16),
        ("finetune", cpu, "bf16", torch.bfloat16),
    ]
    _on_cpu_in_float32(compressed.module)


def test_calibration_runs_on_the_device_and_returns(cnn, digits_loaders):
    compressed = apply_policy(cnn, Policy.quantize(8, 8), digits_loaders[0], finetune=None, device="cpu")
    _on_cpu_in_float32(compressed.module)
    quantizers = [q for _, q in autocompress.core.quantizers(compressed.module)]
    assert quantizers and all(q.calibrated and q._low is None for q in quantizers)


def test_sensitivity_passes_run_on_the_device_and_leave_the_model_where_it_was(cnn, digits_loaders):
    from autocompress.evaluators.runtime import Dataset
    from autocompress.search.proposals import Structure, measure_sensitivities

    train_loader, val, _ = digits_loaders
    example = torch.zeros(1, 1, 8, 8)
    structure = Structure.from_model(cnn, example)
    sens = measure_sensitivities(
        cnn, structure, train_loader=train_loader, val=Dataset(val), example_input=example, device="cpu"
    )
    assert set(sens.pruning) == set(structure.group_channels)
    assert set(sens.quantization) == {s.name for s in structure.layers}
    _on_cpu_in_float32(cnn)


# -- the search and the command line --------------------------------------------------------------


def test_a_search_fine_tunes_on_the_device(cnn, digits_loaders, tmp_path):
    train_loader, val, _ = digits_loaders
    loop = DeviceLoop()
    result = autocompress.search(
        cnn,
        train_loader,
        val,
        space="quantization",
        n_trials=1,
        max_accuracy_drop=0.2,
        finetune=Finetune(epochs=0.2),
        final_finetune=None,
        target=Target(threads=1),
        hardware_proposals=False,
        train_fn=loop,
        workdir=tmp_path,
        progress=False,
        device="cpu",
        autocast="bf16",
    )
    assert result.trials[0].state == "COMPLETE", result.trials[0].error
    assert loop.seen and all(s[1:3] == (torch.device("cpu"), "bf16") for s in loop.seen)


def test_a_search_refuses_a_device_this_machine_lacks_before_any_work(
    monkeypatch, cnn, digits_loaders, tmp_path
):
    _no_cuda(monkeypatch)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        autocompress.search(cnn, *digits_loaders[:2], device="cuda", workdir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_ray_trials_ask_for_gpus_the_cluster_has():
    pytest.importorskip("ray")
    from autocompress.search.ray_backend import check_gpu_resources
    from autocompress.search.trial import TrialSetup

    def setup(device="auto", autocast=None):
        return TrialSetup(
            model=None,
            train_loader=None,
            val=None,
            objectives=[],
            constraint=None,
            finetune=None,
            target=None,
            device=device,
            autocast=autocast,
        )

    check_gpu_resources({"CPU": 1, "GPU": 1}, setup(), {"CPU": 8, "GPU": 2})
    check_gpu_resources({"CPU": 1}, setup(), {"CPU": 8})  # auto: the CPU where Ray reserved no GPU
    with pytest.raises(ValueError, match="1 GPU per trial, but the Ray cluster has 0 GPU"):
        check_gpu_resources({"CPU": 1, "GPU": 1}, setup(), {"CPU": 8})
    for asked in (setup("cuda"), setup(autocast="fp16")):
        with pytest.raises(ValueError, match="needs a GPU reserved for each trial"):
            check_gpu_resources({"CPU": 1}, asked, {"CPU": 8, "GPU": 1})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "gpu"], "argument --device: device='gpu' is not a device"),
        (["--autocast", "int8"], "argument --autocast: invalid choice: 'int8'"),
        (
            ["--device", "cpu", "--autocast", "fp16"],
            "--device cpu --autocast fp16: autocast='fp16' runs on CUDA",
        ),
    ],
)
def test_bad_device_options_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    from autocompress.cli import main

    search = ["search", "--model", "zoo:mnist_cnn", "--data", "digits", "--out", str(tmp_path / "out")]
    assert main([*search, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # said before the baseline trains


def test_cli_cuda_without_cuda_is_a_parse_error(monkeypatch, capsys, tmp_path):
    from autocompress.cli import main

    _no_cuda(monkeypatch)
    assert main(["search", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "argument --device: " in capsys.readouterr().err
