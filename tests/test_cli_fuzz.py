"""The command line against hostile input: every generated argv holds at least one invalid
value (a number out of range, NaN or garbage, an unknown choice, a file where a folder is
needed, a missing or garbage policy, config or storage file, an empty string), and must end
in exit status 2 with one error line that names what is wrong: no traceback, nothing
printed as if it had started, nothing written, and no model trained.

Tripwires stand in for training and for the search (they only ever fail a test): an argv
that got past validation would otherwise train a baseline and search for minutes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import string
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import autocompress.zoo as zoo
from autocompress.cli import main
from autocompress.data import DATASETS, load_dataset
from autocompress.search import driver
from autocompress.search.settings import SAMPLERS, STRATEGIES
from autocompress.search_spaces import PRESETS


class ReachedTraining(AssertionError):  # no handler in the product catches it
    pass


def _tripwire(*args, **kwargs):
    raise ReachedTraining("an invalid argv got through validation to training or a search")


@pytest.fixture(scope="module", autouse=True)
def tripwires(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        # An empty cache: any baseline the CLI got to would have to be trained, which trips.
        patch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path_factory.mktemp("empty-cache")))
        patch.setattr(zoo, "train", _tripwire)
        patch.setattr(driver, "run_search", _tripwire)  # search(), a config's run()
        patch.setattr(driver, "run_job", _tripwire)  # resume(path)
        import autocompress.search.ray_backend  # noqa: F401 (imported once here, not timed in an example)

        load_dataset("digits")
        yield


# -- option values --------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=10)  # argv cannot hold NUL
SPECIAL = [
    *["", " ", "nan", "NaN", "-nan", "inf", "-inf", "+Infinity", "1e999", "-1e999", "1e-400"],
    *["-1", "0", "-0", "-0.0", "0.5", "1", "1.0", "2", "1e3", "0x10", "1,5", "1_0", "\u0663", " 7\n"],
    *["2147483647", "2147483648", "4294967295", "4294967296", "999999", "1000000", "1e6", "1e308"],
    *["99999999999999999999999999", "abc", "--", "-", "-h", "--help", "=", "None", "none"],
]


@dataclasses.dataclass(frozen=True)
class Number:
    """A numeric option as its help states it: kind, minimum (inclusive or not), exclusive maximum."""

    kind: type
    minimum: float
    inclusive: bool = True
    below: float | None = None
    none: bool = False  # 'none' is a value (--confidence)

    def accepts(self, text: str) -> bool:
        if self.none and text.strip().lower() == "none":
            return True
        try:
            value = self.kind(text)  # what int() and float() take: " 7\n", "1_0", an Arabic-Indic 3
        except ValueError:
            return False
        above = value >= self.minimum if self.inclusive else value > self.minimum
        return math.isfinite(value) and above and (self.below is None or value < self.below)

    def valid(self) -> st.SearchStrategy[str]:
        if self.kind is int:
            top = int(self.below) - 1 if self.below is not None else 10**30  # huge is still a count
            return st.integers(int(self.minimum) + (not self.inclusive), top).map(str)
        floats = st.floats(
            self.minimum,
            self.below if self.below is not None else 1e300,
            exclude_min=not self.inclusive,
            exclude_max=self.below is not None,
        ).map(repr)
        return floats | st.just("none") if self.none else floats

    def invalid(self) -> st.SearchStrategy[str]:
        outside = st.integers(max_value=math.ceil(self.minimum) - 1)
        if self.below is not None:
            outside |= st.integers(min_value=math.floor(self.below))
        anything = st.sampled_from(SPECIAL) | outside.map(str) | st.floats().map(repr) | TEXT
        return anything.filter(lambda text: not self.accepts(text))


COUNT, SECONDS, EPOCHS = Number(int, 1), Number(float, 0, False), Number(float, 0, below=1e6)
BASELINE_EPOCHS, THREADS = Number(int, 1, below=10**6), Number(int, 1, below=2**31)
FRACTION = Number(float, 0, below=1)
SEARCH_NUMBERS = {
    "--baseline-epochs": BASELINE_EPOCHS,
    "--max-drop": FRACTION,
    "--confidence": Number(float, 0.5, below=1, none=True),
    "--confirm-fraction": FRACTION,
    "--top-k": COUNT,
    "--trials": COUNT,
    "--timeout": SECONDS,
    "--epochs": EPOCHS,
    "--recovery-epochs": EPOCHS,
    "--threads": THREADS,
}
NUMBERS = {
    "demo": SEARCH_NUMBERS,
    "search": {**SEARCH_NUMBERS, "--seed": Number(int, 0, below=2**32)},
    "resume": {"--baseline-epochs": BASELINE_EPOCHS, "--trials": COUNT, "--timeout": SECONDS},
    "evaluate": {
        "--epochs": EPOCHS,
        "--lr": Number(float, 0, False),
        "--baseline-epochs": BASELINE_EPOCHS,
        "--threads": THREADS,
        "--rounds": COUNT,
    },
}
SEARCH_CHOICES = {"--data": DATASETS, "--space": PRESETS, "--precision": ("f32", "bf16")}
CHOICES = {
    "demo": SEARCH_CHOICES,
    "search": {**SEARCH_CHOICES, "--strategy": STRATEGIES, "--sampler": SAMPLERS},
    "resume": {"--data": DATASETS},
    "evaluate": {"--data": DATASETS, "--precision": ("f32", "bf16")},
}
VALID_CHOICE = {"--data": ["digits"]}  # mnist5k is valid too, but takes 4 s to load

BAD_OBJECTIVES = st.one_of(
    st.sampled_from(["", ",", " , ", "speed", "latency,latency", "latency,size=0.5", "latency=0,size=0"]),
    st.sampled_from(["latency", "size", "speed"]).flatmap(
        lambda name: st.sampled_from(["nan", "inf", "-inf", "-1", "", "abc", "1e999", "0"]).map(
            lambda weight: f"{name}={weight}"
        )
    ),
    st.text(string.ascii_letters + "_", min_size=1, max_size=12).filter(
        lambda name: name not in ("latency", "throughput", "size")
    ),
)
BAD_MODELS = st.one_of(
    st.sampled_from(["", "resnet20", "zoo:", "zoo:nope", "zoo:resnet20:", "zoo:resnet20:width"]),
    st.sampled_from(["zoo:resnet20:width=1,width=2", "zoo:mnist_cnn:depth=3", "torchvision:resnet18"]),
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e12", "1e400", "100", "abc"]).map(
        lambda width: f"zoo:resnet20:width={width}"
    ),
    st.sampled_from(["0", "2", "9", "-1", "1.5", "x"]).map(lambda k: f"zoo:resnet20:kernel_size={k}"),
    st.sampled_from(["0", "3", "-1"]).map(lambda n: f"zoo:resnet20:blocks_per_stage={n}"),
    TEXT.filter(lambda text: not text.startswith("zoo:")),
)
STORAGE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".log", ".jsonl", ".journal")
BAD_STORAGE_TEXT = TEXT.filter(
    lambda text: "://" not in text and not text.startswith("journal:") and not text.endswith(STORAGE_SUFFIXES)
)
EMPTY = st.sampled_from(["", " ", "\t"])

# Files each example gets in its own folder ({tmp}); the garbage ones have drawn contents.
VALID_POLICY = {"default": {"quantization": {"weights": {"bits": 8}, "activations": {"bits": 8}}}}
POLICY_KEYS = {"default", "overrides", "pinned", "student", "distillation", "format", "version"}
GARBAGE_POLICIES = st.one_of(
    st.binary(max_size=40).map(lambda data: b"\xff" + data),  # not UTF-8
    st.integers(0, len(json.dumps(VALID_POLICY)) - 1).map(lambda n: json.dumps(VALID_POLICY)[:n].encode()),
    st.sampled_from([0, 9, 16, -1, "8", 8.0, True, 2.5, None, [8]]).map(
        lambda bits: json.dumps({"default": {"quantization": {"weights": {"bits": bits}}}}).encode()
    ),
    st.dictionaries(TEXT.filter(lambda key: key not in POLICY_KEYS), st.integers(), min_size=1).map(
        lambda data: json.dumps(data).encode()
    ),
    st.sampled_from([b"[]", b"1", b'"policy"', b"null", b"[" * 50_000, b'{"default": {}, "default": {}}']),
)
ABSENT = "model: autocompress_fuzz_absent:model\ndata: autocompress_fuzz_absent:loaders\n"
GARBAGE_CONFIGS = st.one_of(
    st.binary(max_size=40).map(lambda data: b"\xff" + data),
    st.sampled_from(["a: [", "key: 'open", ": :", "{", "- a\n b: c", "a: b\n\tc: d"]).map(str.encode),
    st.sampled_from(["", "~", "- a list", "42", "just text"]).map(str.encode),
    st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8), st.integers(), min_size=1).map(
        lambda data: yaml.safe_dump(data).encode()
    ),
    st.sampled_from(
        [
            "n_trials: 0",
            "n_trials: .inf",
            "max_accuracy_drop: 2",
            "objective: {latency: .nan}",
            "objective: speed",
            "seed: -1",
            "confidence: 0.2",
            "backend: dask",
            "colour: red",
            "finetune: {epoch: 1}",
            "top_k: 0",
        ]
    ).map(lambda line: (ABSENT + line + "\n").encode()),
)
GARBAGE_STORAGE = st.binary(min_size=1, max_size=200).map(lambda data: b"\xff\xfe" + data)  # not SQLite


@dataclasses.dataclass(frozen=True)
class Part:
    """Argv tokens for one option; an invalid part's error must name one of its needles."""

    tokens: tuple[str, ...]
    needles: tuple[str, ...] = ()
    invalid: bool = False


def _option(draw, name: str, value: str, invalid: bool, needles: tuple[str, ...] = ()) -> Part:
    # "--x=v" or "--x v"; a valid value always as "--x=v", so that one starting with "-" stays a value.
    together = not invalid or draw(st.booleans())
    tokens = (f"{name}={value}",) if together else (name, value)
    return Part(tokens, (name, *needles), invalid)


def _bad_value(draw, command: str, name: str) -> Part:
    if name in NUMBERS[command]:
        return _option(draw, name, draw(NUMBERS[command][name].invalid()), True)
    if name in CHOICES[command]:
        value = draw(
            (st.sampled_from(["", "MNIST5K", "digits ", "cifar10"]) | TEXT).filter(
                lambda text: text not in CHOICES[command][name]
            )
        )
        return _option(draw, name, value, True)
    if name == "--objective":
        return _option(draw, name, draw(BAD_OBJECTIVES), True)
    if name == "--model":
        return _option(draw, name, draw(BAD_MODELS), True)
    if name == "--out":
        where = draw(st.sampled_from(["{tmp}/a-file", "{tmp}/a-file/out", "{tmp}/a-file/x/out", "", " "]))
        return _option(draw, name, where, True, (where,) if where.strip() else ())
    if name == "--study-name":
        return _option(draw, name, draw(EMPTY), True)
    if name == "--storage":
        files = ["{tmp}/garbage.db", "{tmp}/folder.db", "{tmp}/a-file", "{tmp}/a-folder", "{tmp}/a-file/x.db"]
        forms = ["", " ", "foo://bar", "http://host/search.db", "search.txt"]
        if command == "resume":  # resume reads a storage that must exist: no new file is valid
            files += ["{tmp}/missing.db", "sqlite:///{tmp}/missing.db", "{tmp}/missing.log"]
        where = draw(st.sampled_from(files + forms) | BAD_STORAGE_TEXT)
        return _option(draw, name, where, True, ("storage", where) if where.strip() else ())
    if name == "--config":
        where = draw(st.sampled_from(["{tmp}/garbage.yaml", "{tmp}/missing.yaml", "{tmp}/a-folder", ""]))
        return _option(draw, name, where, True, (where, "cannot import") if where else ())
    if name == "--policy":
        where = draw(st.sampled_from(["{tmp}/garbage.json", "{tmp}/missing.json", "{tmp}/a-folder", " "]))
        return _option(draw, name, where, True, (where,) if where.strip() else ())
    if name == "--address":
        return _option(draw, name, draw(EMPTY), True)
    if name == "--unknown":  # an option there is none of (not a prefix of one: argparse takes those)
        flag = draw(st.sampled_from(["--colour", "--max_drop", "--gpu", "-x"]))
        # Not blank, not an option: resume would take a blank one as its PATH, and say that is empty.
        value = draw(st.from_regex(r"[^\x00\s-][^\x00]{0,8}", fullmatch=True))
        return Part((flag, value), ("unrecognized arguments",), True)
    raise AssertionError(name)


def _good_value(draw, command: str, name: str) -> Part:
    if name in NUMBERS[command]:
        return _option(draw, name, draw(NUMBERS[command][name].valid()), False)
    if name in CHOICES[command]:
        return _option(
            draw, name, draw(st.sampled_from(VALID_CHOICE.get(name, CHOICES[command][name]))), False
        )
    values = {
        "--objective": ["latency", "size", "throughput", "latency,size", "latency=0.7,size=0.3"],
        "--model": ["zoo:mnist_cnn", "zoo:resnet20:width=0.5", "zoo:mobilenet_cat"],
        "--out": ["{tmp}/out", "{tmp}/a-folder"],
        "--storage": ["{tmp}/new.db", "{tmp}/new.log", "sqlite:///{tmp}/new.sqlite"],
    }
    if name in values:
        return _option(draw, name, draw(st.sampled_from(values[name])), False)
    if name in ("--study-name", "--address"):
        return _option(draw, name, draw(TEXT.filter(str.strip)), False)
    if name == "--relative-drop":
        return Part((name,))
    raise AssertionError(name)


@dataclasses.dataclass(frozen=True)
class Case:
    command: str
    parts: tuple[Part, ...]
    files: dict[str, bytes]

    def argv(self, tmp: Path) -> list[str]:
        return [self.command, *(t.replace("{tmp}", str(tmp)) for p in self.parts for t in p.tokens)]

    def needles(self, tmp: Path) -> list[str]:
        return [n.replace("{tmp}", str(tmp)) for p in self.parts if p.invalid for n in p.needles]


OPTIONS = {
    "demo": [*NUMBERS["demo"], *CHOICES["demo"], "--objective", "--model", "--out", "--unknown"],
    "search": [
        *NUMBERS["search"],
        *CHOICES["search"],
        *["--objective", "--model", "--out", "--study-name", "--storage", "--config", "--unknown"],
    ],
    "resume": [*NUMBERS["resume"], *CHOICES["resume"], "--model", "--unknown"],
    "evaluate": [*NUMBERS["evaluate"], *CHOICES["evaluate"], "--model", "--out", "--unknown"],
}
AFTER_PARSING = {
    "demo": ["--objective", "--model", "--out"],
    "search": ["--objective", "--model", "--out", "--storage", "--config"],
    "resume": ["--model"],  # and its path or storage, always
    "evaluate": ["--model", "--out"],  # and its policy, half the time
}
NOISE = {"demo": ["--relative-drop"], "search": ["--relative-drop"], "resume": [], "evaluate": []}


@st.composite
def cases(draw, command: str) -> Case:
    """``command`` with 1-3 invalid options and some valid ones; resume and evaluate also get the
    path, storage and policy arguments they need, broken where nothing else is."""
    options = OPTIONS[command]
    # Half the time only options that argparse cannot judge, so the checks after parsing get their share.
    pool = draw(st.sampled_from([options, AFTER_PARSING[command]]))
    bad = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    base = [Part(("--model=zoo:mnist_cnn",)), Part(("--data=digits",))]  # later parts override them
    if command in ("search", "demo"):
        base.append(Part(("--out={tmp}/out",)))  # not the default, autocompress-out in the current folder
    needed: list[Part] = []
    if command == "evaluate":
        broken = draw(st.booleans())
        needed.append(
            _bad_value(draw, command, "--policy") if broken else Part(("--policy={tmp}/policy.json",))
        )
    if command == "resume":  # a Ray experiment path (never a real one), or an Optuna storage and study
        mode = draw(st.sampled_from(["path", "storage", "neither"]))
        if mode == "path":
            where = draw(
                st.sampled_from(["{tmp}/missing", "{tmp}/a-file", "{tmp}/a-folder", "{tmp}/garbage.json"])
            )
            needed.append(Part((where,), (where, "Ray"), True))
            needed.append(
                _good_value(draw, command, "--address")
                if draw(st.booleans())
                else _bad_value(draw, command, "--address")
            )
        elif mode == "storage":
            needed.append(_bad_value(draw, command, "--storage"))
            needed.append(
                _good_value(draw, command, "--study-name")
                if draw(st.booleans())
                else _bad_value(draw, command, "--study-name")
            )
        else:
            alone = draw(st.sampled_from(["--storage", "--study-name", None]))
            needed.append(Part((), ("resume needs",), True))
            if alone is not None:
                needed.append(
                    _good_value(draw, command, alone)
                    if alone == "--study-name"
                    else Part(("--storage={tmp}/new.db",))
                )
    if command == "search" and "--config" not in bad and draw(st.booleans()):
        bad.append("--storage")  # a storage that exists and is garbage, or cannot be one
    others = [o for o in options + NOISE[command] if o not in bad and o not in ("--unknown", "--config")]
    good = draw(st.lists(st.sampled_from(others), max_size=4, unique=True))
    parts = [_bad_value(draw, command, name) for name in bad] + [
        _good_value(draw, command, name) for name in good
    ]
    parts = base + draw(st.permutations(parts + needed))
    files = {
        "garbage.json": draw(GARBAGE_POLICIES),
        "garbage.yaml": draw(GARBAGE_CONFIGS),
        "garbage.db": draw(GARBAGE_STORAGE),
    }
    return Case(command, tuple(parts), files)


def _layout(tmp: Path, files: dict[str, bytes]) -> None:
    (tmp / "a-file").write_text("a file, not a folder\n")
    (tmp / "a-folder").mkdir()
    (tmp / "folder.db").mkdir()
    (tmp / "policy.json").write_text(json.dumps(VALID_POLICY))
    for name, data in files.items():
        (tmp / name).write_bytes(data)


def _snapshot(tmp: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(tmp)): p.read_bytes() if p.is_file() else None for p in sorted(tmp.rglob("*"))}


def run_cli(argv: list[str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue(), time.perf_counter() - started


def assert_one_clear_error(status: int, out: str, err: str, needles: list[str]) -> str:
    """Exit 2; stderr: argparse's usage (if it printed it) and exactly one error line, last,
    non-empty, naming one of ``needles``; nothing on stdout. Returns the error line."""
    assert "Traceback" not in err + out
    assert status == 2, err
    assert out == "", "nothing is printed as if the command had started"
    lines = err.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    usage = lines[:-1]
    assert not usage or (usage[0].startswith("usage: ") and all(u.startswith(" ") for u in usage[1:])), err
    message = errors[0].split(": error: ", 1)[1]
    assert message.strip(), err
    assert any(needle in message for needle in needles), f"{message!r} names none of {needles}"
    return message


def check(case: Case) -> None:
    with tempfile.TemporaryDirectory(prefix="cli-fuzz-") as folder:
        tmp = Path(folder)
        _layout(tmp, case.files)
        before = _snapshot(tmp)
        argv = case.argv(tmp)
        status, out, err, seconds = run_cli(argv)
        message = assert_one_clear_error(status, out, err, case.needles(tmp))
        event(
            "rejected by argparse" if message.startswith(("argument ", "unrecognized ")) else "after parsing"
        )
        # Rejected before anything was made: no workdir, no search.db, no file touched.
        assert _snapshot(tmp) == before, argv
        assert seconds < 10, f"{argv} took {seconds:.1f} s to be rejected"


FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(case=st.sampled_from(["search", "demo"]).flatmap(cases))
def test_search_and_demo_reject_every_invalid_argv_in_one_line(case):
    check(case)


@FUZZ
@given(case=cases("resume"))
def test_resume_rejects_every_invalid_argv_in_one_line(case):
    check(case)


@FUZZ
@given(case=cases("evaluate"))
def test_evaluate_rejects_every_invalid_argv_in_one_line(case):
    check(case)


@pytest.mark.parametrize(
    "argv, message",
    [  # what the fuzz found: each was a traceback, accepted, or said only after the baseline trained
        (
            ["search", "--model", "zoo:resnet20:width=inf"],
            "--model 'zoo:resnet20:width=inf': width=inf is not",
        ),
        (["search", "--model", "zoo:resnet20:width=1e12"], "--model 'zoo:resnet20:width=1e12': Storage size"),
        (["search", "--model", "zoo:resnet20:width=100"], "2.7e+09 parameters, more than the 1e+09"),
        (["search", "--objective", "latency=nan"], "--objective 'latency=nan': weighted objective"),
        (["search", "--objective", "speed"], "--objective 'speed': unknown objective 'speed'"),
        (["search", "--seed", "4294967296"], "argument --seed: must be < 4294967296, got 4294967296"),
        (["search", "--threads", "2147483648"], "argument --threads: must be < 2147483648"),
        (["search", "--epochs", "1e308"], "argument --epochs: must be < 1e+06, got 1e+308"),
        (["search", "--trials", " 0\n"], "argument --trials: must be >= 1, got 0"),
        (["search", "--out", ""], "argument --out: is empty; give a folder"),
        (["search", "--study-name", ""], "argument --study-name: is empty; give a name"),
        (["search", "--storage", "foo://bar"], "--storage 'foo://bar': unsupported scheme 'foo'"),
        (["search", "--storage", "{tmp}/garbage.db"], "The file is damaged"),
        (["search", "--out", "{tmp}/a-file"], "--out {tmp}/a-file: it is a file; give a folder"),
        (
            ["search", "--config", "{tmp}/garbage.yaml"],
            "is not valid YAML: while parsing a flow node; expected the node content",
        ),
        (
            ["evaluate", "--policy", "{tmp}/policy.json", "--out", "{tmp}/a-file/x"],
            "a folder on that path is a file",
        ),
        (["resume", "--storage", "{tmp}/missing.db", "--study-name", "s"], "missing.db does not exist"),
        (["resume", "--storage", "{tmp}/garbage.db", "--study-name", "s"], "The file is damaged"),
        (["search", "--colour", "a\nb"], "unrecognized arguments: --colour a; b"),
    ],
)
def test_what_the_fuzz_found_is_one_line_naming_the_option(argv, message):
    files = {"garbage.json": b"{}", "garbage.yaml": b"a: [\n", "garbage.db": b"\xff\xfe" * 100}
    with tempfile.TemporaryDirectory(prefix="cli-fuzz-") as folder:
        tmp = Path(folder)
        _layout(tmp, files)
        command, *rest = argv
        base = ["--model=zoo:mnist_cnn", "--data=digits"] + (
            ["--out={tmp}/out"] if command == "search" else []
        )
        argv = [command, *(a.replace("{tmp}", folder) for a in base + rest)]
        status, out, err, _ = run_cli(argv)
        assert_one_clear_error(status, out, err, [message.replace("{tmp}", folder)])
        assert not (tmp / "out").exists() and not (tmp / "search.db").exists(), argv


def test_resume_of_a_search_db_with_any_one_page_zeroed_is_one_line(tmp_path):
    """Damage that SQLite finds only in the middle of a read (optuna's StorageInternalError) was a
    traceback; every page of a study's database zeroed in turn ends in one line."""
    import optuna

    db = tmp_path / "search.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), 20)
    storage.engine.dispose()
    data = db.read_bytes()
    found = []
    for page in range(len(data) // 4096):
        damaged = tmp_path / f"page-{page}" / "search.db"
        damaged.parent.mkdir()
        damaged.write_bytes(data[: page * 4096] + bytes(4096) + data[(page + 1) * 4096 :])
        status, out, err, _ = run_cli(["resume", "--storage", str(damaged), "--study-name", "s"])
        needles = [str(damaged), "was not created by autocompress.search"]  # damage the resume did not read
        found.append(assert_one_clear_error(status, out, err, needles))
    assert any("cannot be read: DatabaseError" in message for message in found), found
