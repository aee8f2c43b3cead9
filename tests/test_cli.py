"""The command line, end to end on the digits data with the MNIST CNN."""

import json

import pytest

from autocompress.cli import main
from autocompress.policies import LayerPolicy, Policy

FAST = [
    "--model",
    "zoo:mnist_cnn",
    "--data",
    "digits",
    "--baseline-epochs",
    "2",
    "--epochs",
    "0.3",
    "--rounds",
    "2",
]


def test_evaluate_prints_baseline_and_compressed(tmp_path, capsys, cnn):
    policy = Policy.quantize(8, 8, overrides={"fc": LayerPolicy()}).save(tmp_path / "p.json")
    out = tmp_path / "out"
    assert main(["evaluate", "--policy", str(policy), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    rows = {
        line.split()[0]: line
        for line in printed.splitlines()
        if line.startswith(("baseline ", "compressed "))
    }
    assert set(rows) == {"baseline", "compressed"}
    assert "fc  " in printed or "fc: float" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["compressed"]["runtime_precision"]["Convolution"] == {"u8": 3}
    assert (out / "compressed" / "model.xml").exists()


def test_demo_searches_and_writes_the_best_model_and_report(tmp_path, capsys, cnn):
    out = tmp_path / "out"
    argv = [
        "demo",
        "--model",
        "zoo:mnist_cnn",
        "--data",
        "digits",
        "--baseline-epochs",
        "2",
        "--trials",
        "3",
        "--epochs",
        "0.2",
        "--max-drop",
        "0.05",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed
    assert "val acc" in printed and "speedup" in printed  # the table's header
    assert "study 'autocompress-compact': 3 trials" in printed  # the search's summary
    for name in ("best/policy.json", "best/model.xml", "report.html", "report.png", "result.json"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed, name
    Policy.load(out / "best" / "policy.json")
    result = json.loads((out / "result.json").read_text())
    assert len(result["trials"]) == 3
    assert result["floor"] == pytest.approx(result["baseline"]["accuracy"] - 0.05)
    page = (out / "report.html").read_text()
    assert "Pareto front" in page and "plotly" in page and "<script src=" not in page  # works offline
    assert (
        f"autocompress resume --storage sqlite:///{out.resolve()}/search.db --study-name autocompress-compact"
        in printed
    )


def test_search_then_resume_and_resume_errors(tmp_path, capsys, cnn):
    out = tmp_path / "out"
    common = ["--model", "zoo:mnist_cnn", "--data", "digits", "--baseline-epochs", "2"]
    assert (
        main(
            [
                "search",
                *common,
                "--space",
                "quantization",
                "--trials",
                "1",
                "--epochs",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "study 'autocompress-quantization': 1 trials" in capsys.readouterr().out
    storage = ["--storage", str(out / "search.db")]
    # A finished study: nothing left to run, the result again.
    assert main(["resume", *storage, "--study-name", "autocompress-quantization", *common]) == 0
    assert "study 'autocompress-quantization': 1 trials" in capsys.readouterr().out
    assert main(["resume", *storage, "--study-name", "nope", *common]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    narrow = ["--model", "zoo:mnist_cnn:width=0.5", "--data", "digits", "--baseline-epochs", "2"]
    assert main(["resume", *storage, "--study-name", "autocompress-quantization", *narrow]) == 2
    assert "Pass the --model, --data and --baseline-epochs the search used" in capsys.readouterr().err


SEARCH_DIGITS = ["search", "--model", "zoo:mnist_cnn", "--data", "digits", "--baseline-epochs", "2"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "speed"], "unknown objective 'speed'"),
        (["--objective", "latency=a"], "weight 'a' of 'latency' is not a number"),
        (["--max-drop", "1.5"], "argument --max-drop: must be < 1, got 1.5"),
        (["--trials", "0"], "argument --trials: must be >= 1, got 0"),
        (["--trials", "2.5"], "argument --trials: '2.5' is not an integer"),
        (["--timeout", "-5"], "argument --timeout: must be > 0, got -5"),
        (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["--epochs", "nan"], "argument --epochs: must be >= 0, got nan"),
    ],
)
def test_bad_search_options_exit_2_with_the_reason(tmp_path, capsys, argv, message, cnn):
    assert main([*SEARCH_DIGITS, "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (
            '{"default": {"quantization": {"weights": {"bits": 16}}}}',
            "weights.bits: Input should be less than or equal to 8",
        ),
        ('{"overrides": {"layer1.*": {}}}', "'layer1.*' matches no compressible layer"),
    ],
)
def test_bad_policy_exits_2_with_the_reason(tmp_path, capsys, content, message, cnn):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    assert main(["evaluate", "--policy", str(path), *FAST]) == 2
    assert message in capsys.readouterr().err


def write_config(tmp_path, text: str):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


def test_search_from_a_config_file_with_entry_points(tmp_path, capsys, entry_points, cnn):
    config = write_config(
        tmp_path,
        f"""
model: {entry_points}:model
data: {entry_points}:loaders
space: quantization
n_trials: 1
max_accuracy_drop: 0.05
finetune: {{epochs: 0.1}}
target: {{threads: 1}}
workdir: {tmp_path / "out"}
study_name: from-config
""",
    )
    assert main(["search", "--config", str(config)]) == 0
    assert "study 'from-config': 1 trials" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (
        len(result["trials"]) == 1 and result["test"]["samples"] > 0
    )  # the entry point's test loader re-checks


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: ENTRY:model\ndata: ENTRY:loaders\ncolour: red\n", "unknown setting(s) colour"),
        ("model: ENTRY:model\n", "data: an entry point 'package.module:function' is required"),
        ("model: no_such_module:model\ndata: ENTRY:loaders\n", "model: cannot import 'no_such_module'"),
        (
            "model: ENTRY\ndata: ENTRY:loaders\n",
            "is not an entry point; write it as 'package.module:function'",
        ),
        ("model: ENTRY:nope\ndata: ENTRY:loaders\n", "module 'ENTRY' has no 'nope'"),
        (
            "model: ENTRY:model\ndata: ENTRY:loaders\nfinetune: {epoch: 1}\n",
            "finetune: unknown setting(s) epoch",
        ),
        ("model: ENTRY:model\ndata: ENTRY:loaders\nbackend: dask\n", "unknown backend 'dask'"),
        ("- a list\n", "must be a mapping of settings"),
    ],
)
def test_bad_config_files_exit_2_with_the_reason(tmp_path, capsys, entry_points, text, message):
    config = write_config(tmp_path, text.replace("ENTRY", entry_points))
    assert main(["search", "--config", str(config)]) == 2
    assert message.replace("ENTRY", entry_points) in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, message",
    [
        ("timeout: .nan", "timeout must be a finite number"),
        ("timeout: .inf", "timeout must be a finite number"),
        ("early_stop_margin: .nan", "early_stop_margin must be a finite number"),
        ("finetune: {epochs: .nan}", "Finetune epochs=nan: must be a finite number"),
        ("finetune: {lr: .nan}", "Finetune lr=nan: must be a finite number"),
        ("finetune: {epochs: .inf}", "Finetune epochs=inf: must be a finite number"),
        ("final_finetune: {weight_decay: .nan}", "Finetune weight_decay=nan"),
        ("seed: 4294967296", "seed must be an int from 0 to 4294967295"),
        ("target: {threads: 4294967296}", "Target.threads must be an int from 1 to 2147483647"),
        ("target: {device: TPU}", "Target.device must be an OpenVINO device name: CPU, GPU, NPU"),
        ("target: {device: cpu}", "Target.device must be an OpenVINO device name"),
        ("sampler: nope", "unknown sampler 'nope'; use one of auto, tpe"),
        ("sampler: TPESampler", "unknown sampler 'TPESampler'"),  # a stored instance's name, not a setting
        ("relative_drop: 'yes'", "relative_drop must be True"),
        ("relative_drop: 1", "relative_drop must be True"),
        ("relative_drop: 2", "relative_drop must be True"),
        ("workdir: 5", "workdir must be a folder path"),
        ("workdir: ''", "workdir must be a folder path"),
        ("workdir: []", "workdir must be a folder path"),
        ("study_name: 5", "study_name must be a non-empty string"),
        ("study_name: ''", "study_name must be a non-empty string"),
        ("study_name: []", "study_name must be a non-empty string"),
        ("storage: 5", "storage must be None"),
        ("storage: ''", "storage must be None"),
        ("storage: []", "storage must be None"),
        ("storage: x.txt", "cannot tell what storage 'x.txt' is"),
        ("space: nope", "unknown search space preset 'nope'; presets: quantization"),
        ("backend: ray\nray: {resources_per_trial: {cpu: .nan}}", "resources_per_trial must be"),
    ],
)
def test_bad_settings_are_refused_when_the_config_loads(tmp_path, setting, message):
    """SearchConfig.load (what `search --config` checks before it runs anything): one line
    naming the file and what is wrong; NaN passes `x <= 0`, so it is checked for itself."""
    from autocompress.config import SearchConfig

    config = write_config(tmp_path, f"model: entry:model\ndata: entry:loaders\n{setting}\n")
    with pytest.raises(ValueError) as raised:
        SearchConfig.load(config)
    said = str(raised.value)
    assert said.startswith(f"search config {config}: ") and message in said and "\n" not in said


def test_good_settings_still_load(tmp_path):
    from autocompress.config import SearchConfig

    config = write_config(
        tmp_path,
        "model: entry:model\ndata: entry:loaders\nsampler: tpe\nrelative_drop: true\nseed: 4294967295\n"
        "storage: search.log\nstudy_name: s\ntarget: {device: 'AUTO:GPU,CPU', threads: 8}\n"
        "finetune: {epochs: 0.5, rewind_lr: null}\n",
    )
    settings = SearchConfig.load(config).settings
    assert settings.sampler == "tpe" and settings.relative_drop is True and settings.seed == 2**32 - 1
    assert settings.target.device == "AUTO:GPU,CPU" and settings.storage == "search.log"


@pytest.mark.parametrize("setting", ["space: nope", "storage: x.txt"])
def test_a_bad_space_or_storage_is_said_before_the_model_entry_point_runs(
    tmp_path, monkeypatch, capsys, setting
):
    (tmp_path / "tripwire_entry.py").write_text(
        "def model():\n    raise AssertionError('the model entry point ran')\n\n\n"
        "def loaders():\n    raise AssertionError('the data entry point ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path, f"model: tripwire_entry:model\ndata: tripwire_entry:loaders\n{setting}\n")
    assert main(["search", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "entry point ran" not in err and str(config) in err


def test_resume_needs_a_path_or_a_storage_and_study(capsys):
    assert main(["resume"]) == 2
    assert "resume needs a Ray experiment PATH, or --storage and --study-name" in capsys.readouterr().err


def test_an_out_folder_under_a_file_is_one_line_naming_it(tmp_path, capsys, cnn):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out"
    assert main([*SEARCH_DIGITS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "a-file") in err and "a folder on that path is a file" in err
