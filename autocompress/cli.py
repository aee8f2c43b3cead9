"""Command line: ``autocompress demo``, ``search``, ``resume`` and ``evaluate``."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import sys
import time
from pathlib import Path

import optuna
import torch

import autocompress
from autocompress.core import Finetune, ModelError, apply_policy, compressible_layers
from autocompress.data import DATASETS, load_dataset, make_loaders
from autocompress.devices import AUTOCAST, Accelerator
from autocompress.evaluate import evaluate
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant
from autocompress.search.objectives import parse_objectives
from autocompress.search.optuna_backend import PRUNERS
from autocompress.search.settings import SAMPLERS, SEARCH_FINETUNE, STRATEGIES, SearchSettings
from autocompress.search.storage import RDB_SCHEMES, open_storage, storage_url
from autocompress.search_spaces import PRESETS, SpaceError
from autocompress.zoo import build_model, default_cache_dir, parse_model_spec, pretrained


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        super().error(_one_line(message))  # a value with a newline in it must not split the error line


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="autocompress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="constrained search on the built-in ResNet-20 / MNIST-5k: fastest policy within 1 pt of accuracy",
        description="Train (once, cached) the zoo ResNet-20 on MNIST-5k, search compression policies for the lowest "
        "OpenVINO latency with validation accuracy at most --max-drop below the baseline's, re-check the best "
        "policy on the test split and write the best model, result.json and a report to --out.",
    )
    _add_search_options(demo)

    search = commands.add_parser(
        "search",
        help="constrained policy search on a zoo model, or on your own with --config (Optuna or Ray; resumable)",
    )
    search.add_argument(
        "--config",
        type=_nonempty(Path, "a YAML file"),
        default=None,
        help="a YAML search config (model/data/metric as module:function entry points, backend, ray "
        "options; see autocompress.config): the file is the whole search, other options are ignored",
    )
    _add_search_options(search)
    search.add_argument(
        "--storage",
        type=STORAGE,
        default=None,
        help="Optuna storage: a .db file, a journal .log file or an RDB URL (default: search.db in --out)",
    )
    search.add_argument(
        "--study-name", type=NAME, default=None, help="study name (default: autocompress-SPACE)"
    )
    search.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="direct",
        help="condensa: first the highest uniform INT8 pruning level meeting the constraint, then the space below it",
    )
    search.add_argument("--sampler", choices=SAMPLERS, default="auto")
    search.add_argument(
        "--pruner",
        choices=PRUNERS,
        default=None,
        help="multi-fidelity: stop candidates at the accuracy checks (feasibility: when they can no longer "
        "end feasible, learned from the finished trials; halving/hyperband/median: Optuna's, by accuracy)",
    )
    search.add_argument("--seed", type=SEED, default=0)

    res = commands.add_parser(
        "resume",
        help="continue a search: a Ray experiment directory (PATH), or an Optuna storage and study "
        "(--storage, --study-name, with the search's --model, --data and --baseline-epochs)",
    )
    res.add_argument(
        "path",
        nargs="?",
        type=_nonempty(str, "a Ray experiment directory"),
        default=None,
        help="a Ray search's experiment directory (<storage_path>/<study_name>)",
    )
    res.add_argument(
        "--address",
        type=_nonempty(str, "an address such as auto, host:port or local"),
        default=None,
        help="Ray cluster to run the rest on (default: the one the search ran on; 'local': a fresh local Ray)",
    )
    res.add_argument(
        "--storage",
        type=STORAGE,
        default=None,
        help="the search's storage (e.g. autocompress-out/search.db or a URL)",
    )
    res.add_argument("--study-name", type=NAME, default=None)
    _add_model_options(res)
    _add_device_options(res)
    res.add_argument(
        "--trials",
        type=COUNT,
        default=None,
        help="finished trials the study should hold (default: the original budget)",
    )
    res.add_argument("--timeout", type=SECONDS, default=None, help="seconds after which no new trial starts")

    ev = commands.add_parser(
        "evaluate", help="compress a model with a policy and print baseline vs compressed"
    )
    ev.add_argument(
        "--model", default="zoo:resnet20", help="zoo:NAME[:key=value,...], e.g. zoo:resnet20:width=2"
    )
    ev.add_argument("--data", default="mnist5k", choices=DATASETS)
    ev.add_argument(
        "--policy",
        required=True,
        type=_nonempty(Path, "a policy JSON file"),
        help="policy JSON (see autocompress.policies.Policy)",
    )
    _add_common(ev)
    _add_device_options(ev)

    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad option (argparse printed why)
        return int(exit_.code or 0)
    handlers = {"demo": _search, "search": _search, "resume": _resume, "evaluate": _evaluate}
    try:
        return handlers[args.command](args)
    except (PolicyError, ModelError, SpaceError, ValueError) as error:
        print(f"autocompress: error: {_one_line(str(error) or type(error).__name__)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"autocompress: error: {_one_line(_os_error(error))}", file=sys.stderr)
        return 2
    except optuna.exceptions.StorageInternalError as error:  # a database that fails in the middle of a read
        print(f"autocompress: error: {_one_line(_storage_error(args, error))}", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    """An error as one line (YAML and pydantic messages span several): indented lines continue
    the one before, others are joined with '; '."""
    joined = ""
    for line in text.splitlines():
        if line.strip():
            separator = " " if line[:1].isspace() else "; "
            joined = f"{joined}{separator}{line.strip()}" if joined else line.strip()
    return joined


def _storage_error(args, error: Exception) -> str:
    """One line: which storage, what the database said, and what to do."""
    cause = error.__cause__ or error.__context__ or error
    said = (str(cause).splitlines() or [""])[0]
    where = getattr(args, "storage", None)
    if where is None and getattr(args, "config", None) is None and getattr(args, "out", None) is not None:
        where = args.out / "search.db"
    return (
        f"the search storage {where or 'of the config'} cannot be read: {type(cause).__name__}: {said}. "
        "If it is a file, it is damaged: restore it from a backup, or start a new search (another --out or --storage)"
    )


_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a folder on that path is a file; choose another path",
    errno.EISDIR: "it is a folder; give a file",
    errno.EACCES: "check its permissions, or choose a path you can write",
    errno.EPERM: "check its permissions, or choose a path you can write",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another disk",
}


def _os_error(error: OSError) -> str:
    """One line: the path, what the system said, and what to do."""
    if error.filename is None or error.strerror is None:
        return str(error)  # ours already name the file
    fix = _OS_FIXES.get(error.errno)
    return f"{error.filename}: {error.strerror}" + (f"; {fix}" if fix else "")


def _number(kind: type, *, minimum: float, inclusive: bool = True, below: float | None = None):
    """An argparse type: a finite ``kind`` >= minimum (> minimum unless inclusive), < below."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        shown = f"{value:g}" if kind is float else str(value)  # not the text: " 0\n" is an int too
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {shown}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(
                f"must be < {below:g}, got {shown}" if kind is float else f"must be < {below}, got {shown}"
            )
        return value

    return parse


COUNT = _number(int, minimum=1)  # trials, top-k, rounds
THREADS = _number(int, minimum=1, below=2**31)  # OpenVINO takes a 32-bit int and fails on more
SEED = _number(int, minimum=0, below=2**32)  # numpy's range, so Optuna's samplers': beyond, a trial fails
SECONDS = _number(float, minimum=0, inclusive=False)
# Far above any budget; a larger count never ends (or overflows the step count to inf).
EPOCHS = _number(float, minimum=0, below=1e6)
BASELINE_EPOCHS = _number(int, minimum=1, below=10**6)
RATE = _number(float, minimum=0, inclusive=False)
DROP = _number(float, minimum=0, below=1)
# A model of more parameters than this would not fit in memory to train on a CPU; --model is
# built on the meta device first (no memory), so a huge width is an error, not an allocation.
MAX_PARAMETERS = 10**9


def _nonempty(kind: type, what: str):
    """An argparse type: a non-empty ``kind`` (an empty --out would be the current folder)."""

    def parse(text: str):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty; give {what}")
        return kind(text)

    return parse


NAME = _nonempty(str, "a name")
STORAGE = _nonempty(str, "a .db or .log file or a URL")


def CONFIDENCE(text: str) -> float | None:  # noqa: N802 (an argparse type, named like the others)
    """'none' or a confidence in [0.5, 1)."""
    if text.strip().lower() == "none":
        return None
    return _number(float, minimum=0.5, below=1)(text)


def DEVICE(text: str) -> str:  # noqa: N802 (an argparse type, named like the others)
    """auto, cpu, cuda or cuda:N, present on this machine."""
    try:
        accelerator = Accelerator(text.strip())
        accelerator.torch_device  # noqa: B018 (a CUDA device this machine lacks is an error now)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return accelerator.device


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        type=DEVICE,
        default="auto",
        help="where fine-tuning, distillation and calibration run: auto (CUDA when there is one), cpu, "
        "cuda or cuda:N; export and measurement stay on the CPU / the target",
    )
    parser.add_argument(
        "--autocast",
        choices=sorted(AUTOCAST),
        default=None,
        help="train under torch.autocast in this precision (fp16: CUDA only; default: float32)",
    )


def _accelerator(args) -> Accelerator:
    """--device and --autocast together (fp16 on the CPU is refused), before anything trains."""
    try:
        accelerator = Accelerator(args.device, args.autocast)
        accelerator.torch_device  # noqa: B018 (raises for a device this machine does not have)
    except ValueError as error:
        raise ValueError(f"--device {args.device} --autocast {args.autocast}: {error}") from None
    return accelerator


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="zoo:resnet20", help="zoo:NAME[:key=value,...], e.g. zoo:resnet20:width=2"
    )
    parser.add_argument("--data", default="mnist5k", choices=DATASETS)
    parser.add_argument(
        "--baseline-epochs", type=BASELINE_EPOCHS, default=8, help="training epochs of the cached baseline"
    )


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_device_options(parser)
    parser.add_argument(
        "--space",
        default="compact",
        choices=PRESETS,
        help="search space preset (default: compact, 4 global knobs)",
    )
    parser.add_argument(
        "--objective",
        default="latency",
        help="latency, throughput or size; a,b for a Pareto search; name=weight,... for a weighted mix",
    )
    parser.add_argument(
        "--max-drop", type=DROP, default=0.01, help="allowed validation accuracy drop (0.01 = 1 point)"
    )
    parser.add_argument(
        "--relative-drop", action="store_true", help="--max-drop is a fraction of the baseline accuracy"
    )
    parser.add_argument(
        "--confidence",
        type=CONFIDENCE,
        default=0.9,
        help="the constraint must hold for the drop's one-sided upper bound at this confidence "
        "(paired with the baseline); 'none': for the measured drop",
    )
    parser.add_argument(
        "--confirm-fraction",
        type=_number(float, minimum=0, below=1),
        default=SearchSettings.confirm_fraction,
        help="share of the validation data held back to confirm the best candidates on (0: none)",
    )
    parser.add_argument(
        "--top-k", type=COUNT, default=3, help="best feasible trials confirmed, best first, until one passes"
    )
    parser.add_argument("--trials", type=COUNT, default=12, help="number of trials")
    parser.add_argument(
        "--timeout", type=SECONDS, default=None, help="seconds after which no new trial starts"
    )
    parser.add_argument(
        "--epochs", type=EPOCHS, default=SEARCH_FINETUNE.epochs, help="QAT fine-tuning epochs per trial"
    )
    parser.add_argument(
        "--recovery-epochs",
        type=EPOCHS,
        default=SEARCH_FINETUNE.recovery_epochs,
        help="float recovery epochs after pruning, per trial",
    )
    parser.add_argument(
        "--threads", type=THREADS, default=None, help="OpenVINO inference threads (default: runtime)"
    )
    parser.add_argument(
        "--precision", choices=["f32", "bf16"], default=None, help="precision hint for float layers"
    )
    parser.add_argument(
        "--out",
        type=_nonempty(Path, "a folder"),
        default=Path("autocompress-out"),
        help="work directory: trials, best model, report",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=EPOCHS, default=1.0, help="fine-tuning epochs after compression")
    parser.add_argument("--lr", type=RATE, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument(
        "--baseline-epochs", type=BASELINE_EPOCHS, default=8, help="training epochs of the cached baseline"
    )
    parser.add_argument(
        "--threads", type=THREADS, default=None, help="OpenVINO inference threads (default: runtime)"
    )
    parser.add_argument(
        "--precision", choices=["f32", "bf16"], default=None, help="precision hint for float layers"
    )
    parser.add_argument("--rounds", type=COUNT, default=5, help="alternating latency rounds")
    parser.add_argument(
        "--out",
        type=_nonempty(Path, "a folder"),
        default=None,
        help="directory for IR/ONNX files, policies and report.json",
    )


def _setup(args):
    name, kwargs = parse_model_spec(args.model)
    started = time.perf_counter()
    model = pretrained(name, args.data, epochs=args.baseline_epochs, **kwargs)
    print(f"baseline {args.model} on {args.data}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    train_loader, _, test_loader = make_loaders(load_dataset(args.data))
    target = Target(threads=args.threads, precision_hint=args.precision)
    return model, train_loader, test_loader, target


def _compress(model, policy: Policy, train_loader, args, label: str):
    started = time.perf_counter()
    compressed = apply_policy(
        model,
        policy,
        train_loader,
        finetune=Finetune(epochs=args.epochs, lr=args.lr),
        device=args.device,
        autocast=args.autocast,
    )
    print(f"{label}: compressed and fine-tuned in {time.perf_counter() - started:.1f} s", flush=True)
    return compressed


def _report(models: dict, test_loader, target: Target, args, targets: dict | None = None) -> int:
    started = time.perf_counter()
    report = evaluate(
        models,
        test_loader,
        target=target,
        targets=targets,
        latency=LatencyConfig(rounds=args.rounds),
        workdir=args.out,
    )
    print(f"measured in {time.perf_counter() - started:.1f} s\n")
    print(report.table())
    if args.out is not None:
        (args.out / "report.json").write_text(report.to_json() + "\n")
        print(f"\nwrote {args.out}/ (IR, ONNX, policies, report.json)")
    return 0


def _evaluate(args) -> int:
    policy = Policy.load(args.policy)
    if args.out is not None:
        _check_folder(args.out, "--out")
    _check_model(args.model, args.data)
    _accelerator(args)
    model, train_loader, test_loader, target = _setup(args)
    print(policy.describe(), flush=True)
    compressed = _compress(model, policy, train_loader, args, "policy")
    return _report({"baseline": model, "compressed": compressed}, test_loader, target, args)


def demo_policies(layers: list[str]) -> dict[str, Policy]:
    """W8A8 everywhere, and a mixed policy: 4-bit weights in the inner layers, 8-bit in
    the first and last (the layers most sensitive to quantization)."""
    four_bit = LayerPolicy(
        quantization=LayerQuant(
            weights=TensorQuant(bits=4, per_channel=True, range_init="mse", learn_scale=True)
        )
    )
    return {
        "w8a8": Policy.quantize(8, 8),
        "mixed_w4_w8": Policy.quantize(8, 8, overrides={name: four_bit for name in layers[1:-1]}),
    }


def parse_objective(text: str):
    """'latency' -> 'latency'; 'latency,size' -> ['latency', 'size']; 'latency=0.7,size=0.3' -> a weighted mix."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("--objective is empty; use latency, throughput or size")
    weighted = ["=" in p for p in parts]
    if not any(weighted):
        return parts[0] if len(parts) == 1 else parts
    if not all(weighted):
        raise ValueError(f"--objective {text!r}: give either names (a,b) or weights (a=0.5,b=0.5), not both")
    weights = {}
    for part in parts:
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"--objective {text!r}: weight {value!r} of {name.strip()!r} is not a number"
            ) from None
    return weights


def _load(args):
    """The pretrained zoo model and the (train, val, test) loaders of --data."""
    name, kwargs = parse_model_spec(args.model)
    print(
        f"baseline {args.model} on {args.data}: {args.baseline_epochs} training epochs, once "
        f"(cached in {default_cache_dir()})",
        flush=True,
    )
    started = time.perf_counter()
    model = pretrained(name, args.data, epochs=args.baseline_epochs, **kwargs)
    print(f"baseline {args.model} on {args.data}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    train_loader, val_loader, test_loader = make_loaders(load_dataset(args.data))
    return model, train_loader, val_loader, test_loader


def _search(args) -> int:
    if getattr(args, "config", None) is not None:
        from autocompress.config import SearchConfig

        result = SearchConfig.load(args.config).run(progress=True)
        return _print_result(result, args)
    # Everything the options can get wrong is said now, not after minutes of training the baseline.
    objective = parse_objective(args.objective)
    try:
        parse_objectives(objective)
    except ValueError as error:
        raise ValueError(f"--objective {args.objective!r}: {error}") from None
    _check_folder(args.out, "--out")
    _check_storage(getattr(args, "storage", None), args.out)
    _check_model(args.model, args.data)
    accelerator = _accelerator(args)
    finetune = Finetune(
        **{
            **dataclasses.asdict(SEARCH_FINETUNE),
            "epochs": args.epochs,
            "recovery_epochs": args.recovery_epochs,
        }
    )
    target = Target(threads=args.threads, precision_hint=args.precision)
    model, train_loader, val_loader, test_loader = _load(args)
    result = autocompress.search(
        model,
        train_loader,
        val_loader,
        test_loader=test_loader,
        objective=objective,
        max_accuracy_drop=args.max_drop,
        relative_drop=args.relative_drop,
        target=target,
        space=args.space,
        n_trials=args.trials,
        timeout=args.timeout,
        storage=getattr(args, "storage", None),
        study_name=getattr(args, "study_name", None),
        workdir=args.out,
        finetune=finetune,
        sampler=getattr(args, "sampler", "auto"),
        strategy=getattr(args, "strategy", "direct"),
        pruner=getattr(args, "pruner", None),
        seed=getattr(args, "seed", 0),
        confidence=args.confidence,
        confirm_fraction=args.confirm_fraction,
        top_k=args.top_k,
        progress=True,
        device=accelerator.device,
        autocast=accelerator.autocast,
    )
    return _print_result(result, args)


def _resume(args) -> int:
    accelerator = _accelerator(args)
    if args.path is not None:
        result = autocompress.resume(
            args.path,
            address=args.address,
            timeout=args.timeout,
            progress=True,
            device=accelerator.device,
            autocast=accelerator.autocast,
        )
        return _print_result(result, args)
    if args.storage is None or args.study_name is None:
        raise ValueError(
            "resume needs a Ray experiment PATH, or --storage and --study-name of an Optuna search"
        )
    from autocompress.search import optuna_backend

    # A wrong storage, study or model is said before the baseline trains, and no empty
    # database is created where the search's was expected.
    _check_storage(args.storage, Path.cwd(), must_exist=True)
    settings = optuna_backend.load_settings(args.storage, args.study_name)
    _check_model(args.model, args.data)
    model, train_loader, val_loader, test_loader = _load(args)
    _check_same_model(args, model, settings)
    result = autocompress.resume(
        model,
        train_loader,
        val_loader,
        storage=args.storage,
        study_name=args.study_name,
        test_loader=test_loader,
        n_trials=args.trials,
        timeout=args.timeout,
        progress=True,
        device=accelerator.device,
        autocast=accelerator.autocast,
    )
    return _print_result(result, args)


def _check_same_model(args, model, settings) -> None:
    """The study's search space names the layers it was built for; a different --model cannot continue it."""
    from autocompress.evaluators.size import parameter_stats
    from autocompress.search import optuna_backend

    hint = "Pass the --model, --data and --baseline-epochs the search used."
    layers = settings.space.get("layers") if isinstance(settings.space, dict) else None
    if layers is not None and list(layers) != compressible_layers(model):
        raise ValueError(
            f"study {args.study_name!r} searched a model with layers {', '.join(layers)}; {args.model} has "
            f"{', '.join(compressible_layers(model))}. {hint}"
        )
    parameters = (optuna_backend.stored_baseline(args.storage, args.study_name) or {}).get("parameters")
    if parameters is not None and parameters != parameter_stats(model)["parameters"]:
        raise ValueError(
            f"study {args.study_name!r} searched a model with {parameters:,} parameters; {args.model} on {args.data} "
            f"has {parameter_stats(model)['parameters']:,}. {hint}"
        )


def _check_folder(path: Path, option: str) -> None:
    """``path`` is a folder, or one can be made there: checked before anything is trained."""
    where = Path(os.path.abspath(path))
    existing = next(p for p in (where, *where.parents) if p.exists())
    if not existing.is_dir():
        if existing == where:
            raise ValueError(f"{option} {path}: it is a file; give a folder")
        raise ValueError(
            f"{option} {path}: a folder on that path is a file ({existing}); choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(existing))


def _check_storage(storage: str | None, workdir: Path, *, must_exist: bool = False) -> None:
    """The form and scheme of --storage, and a storage file there opens (a damaged one is an
    error now). A database server is not contacted here."""
    url = storage_url(storage, workdir)  # raises for a form it cannot tell
    if url.startswith(("sqlite:///", "journal:")):
        path = Path(url.removeprefix("sqlite:///").removeprefix("journal:"))
        what = f"--storage {storage}" if storage is not None else f"the search's storage {path}"
        if not path.exists():
            if must_exist:
                raise ValueError(f"{what}: {path} does not exist; check the path (the search printed it)")
            _check_folder(path.parent, "--storage")
            return
        if not path.is_file():
            raise ValueError(f"{what}: {path} is not a file; give the search's .db or .log file")
        if url.startswith("sqlite:///"):
            opened = open_storage(url, heartbeat_interval=None)
            opened.engine.dispose()
        return
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"--storage {storage!r}: unsupported scheme {scheme!r}; use a .db or .log file, or a "
            f"{', '.join(RDB_SCHEMES)} URL"
        )


def _check_model(spec: str, data: str) -> None:
    """--model built on the meta device (no memory, no training): a bad name, argument or size is
    an error naming it before the baseline trains."""
    try:
        name, kwargs = parse_model_spec(spec)
    except ValueError as error:
        raise ValueError(f"--model: {error}") from None
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--model {spec!r}: {key}={value} is not a finite number")
    splits = load_dataset(data)
    try:
        with torch.device("meta"):
            model = build_model(name, splits.input_shape, splits.num_classes, **kwargs)
    except (ValueError, TypeError, OverflowError, RuntimeError) as error:  # torch: sizes that overflow
        raise ValueError(f"--model {spec!r}: {error}") from None
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"--model {spec!r}: {parameters:.3g} parameters, more than the {MAX_PARAMETERS:.0e} that fit in "
            "memory to train; choose a smaller width"
        )


def _print_result(result, args) -> int:
    """After the search's own summary (printed as it finishes): the Pareto table, the best policy, the files."""
    print(
        "\nPareto front (feasible trials, best first; validation accuracy, speedup from the trial's latency rounds):"
    )
    print(result.pareto_table() if result.pareto else "(no feasible trial)")
    if result.best is not None and result.best.policy is not None:
        label = "best policy" if result.feasible else "closest (infeasible) policy"
        print(f"\n{label}, trial {result.best.number}:\n{result.best.policy.describe()}")
    workdir = Path(result.workdir)
    files = [
        workdir / "best" / "policy.json",
        workdir / "best" / "model.xml",
        workdir / "report.html",
        workdir / "report.png",
        workdir / "result.json",
    ]
    print("\nwritten:")
    for path in files:
        if path.exists():
            print(f"  {path}")
    storage = str(result.storage)
    if Path(storage, "autocompress.json").exists():  # a Ray experiment
        print(f"\nto continue this search: autocompress resume {storage}")
    elif getattr(args, "config", None) is None and ("://" in storage or storage.startswith("journal:")):
        print(
            f"\nto continue this search: autocompress resume --storage {result.storage} "
            f"--study-name {result.study_name} "
            f"--model {args.model} --data {args.data} --baseline-epochs {args.baseline_epochs} --trials N"
        )
    if result.best is None:
        return 1
    if result.test is not None and not result.test["held"]:
        print(
            f"\nexit status 3: the promise did not hold on the test split ({100 * result.test['drop']:.2f} pt "
            f"dropped, {100 * result.test['allowed_drop']:.2f} pt allowed)",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
