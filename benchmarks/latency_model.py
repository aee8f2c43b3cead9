"""Latency-model replay: how well the library's latency model predicts the trials of saved searches.

A search keeps its profiles (``workdir/hardware/profiles``) and every trial's measured
latency ratio (``result.json``). This refits the model as the library does now on those
profiles and replays the search's order: each trial is predicted by the model calibrated
on the trials before it, then added (what ``result.hardware["latency_model_prequential"]``
reports during a search). No measurement runs, so a change to the model is judged on
many searches in seconds, on the very latencies they measured. Students' trials are not
predicted (their layers are not the profiled model's).

Each argument is ``WORKDIR:MODEL`` with MODEL a zoo name as benchmarks/search.py has it
(resnet20_w2, mnist_cnn, mobilenet_cat): the structure and the joint space are rebuilt
from it (MNIST-5k input). Profiles saved before cache version 2 recorded a layer's work
(in x out) rather than its kept fractions; they are read as pruned alike on both sides.

    python benchmarks/latency_model.py runs/resnet20_w2/ours:resnet20_w2 runs/mnist_cnn/ours:mnist_cnn
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autocompress.data import load_dataset, make_loaders
from autocompress.search.proposals import (
    LatencyModel,
    Profile,
    Structure,
    UnpredictableError,
    fit_space,
)
from autocompress.search_spaces import SpaceError, build_space
from autocompress.zoo import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import MODELS  # noqa: E402  (the search benchmark's models, by the same names)


def load_profiles(folder: Path, structure: Structure) -> list[Profile]:
    """The saved profiles, the baseline (fp32) first."""
    shapes = {s.name: s for s in structure.layers}

    def kept_of(layer: str, work: float) -> tuple[float, float]:
        shape = shapes[layer]
        if shape.both_sides:
            return (work**0.5, work**0.5)
        return (work, 1.0) if shape.in_groups and not shape.out_group else (1.0, work)

    profiles = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())["profile"]
        if "work" in data:  # cache version 1
            data["kept"] = {k: kept_of(k, w) for k, w in data.pop("work").items() if k in shapes}
        profiles.append(Profile.from_dict(data))
    return sorted(profiles, key=lambda p: p.name != "fp32")


def replay(workdir: Path, label: str) -> list[tuple[int, float, float]]:
    """(trial, predicted, measured) latency ratios, in the search's order."""
    name, kwargs = MODELS[label]
    train, _, _ = make_loaders(load_dataset("mnist5k"), batch_size=64)
    model = pretrained(name, "mnist5k", **kwargs)
    example = next(iter(train))[0][:1]
    space = build_space(model, "joint", example_input=example)
    structure = Structure.from_model(model, example, space.base.pinned)
    profiles = load_profiles(workdir / "hardware" / "profiles", structure)
    evidence = {p.precision: p.latency_ratio for p in profiles if p.ratio == 0}
    fitted, _ = fit_space(space, evidence, "latency")
    initial = LatencyModel.fit(profiles, structure, fitted)
    names = {d.name for d in fitted.dimensions}
    trials = json.loads((workdir / "result.json").read_text())["trials"]
    rows, seen, model_now = [], [], initial
    for trial in sorted(
        (t for t in trials if t.get("params") and t.get("speedup")), key=lambda t: t["trial"]
    ):
        params = dict(trial["params"])
        for dim, value in (("student", False), ("student_width", 0.5), ("student_blocks", 3)):
            if dim in names:  # a search saved before the space had the dimension
                params.setdefault(dim, value)
        measured = 1.0 / trial["speedup"]
        try:
            rows.append((trial["trial"], model_now.predict(params), measured))
        except (UnpredictableError, SpaceError):
            pass
        seen.append((params, measured))
        model_now = initial.calibrate(seen)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="WORKDIR:MODEL of saved searches")
    args = parser.parse_args(argv)
    everything = []
    print(f"{'search':50s} {'n':>3s} {'median':>7s} {'<=10%':>6s}  misses (trial: error)")
    for run in args.runs:
        folder, _, label = run.rpartition(":")
        if label not in MODELS or not folder:
            parser.error(f"{run!r}: expected WORKDIR:MODEL with MODEL one of {', '.join(MODELS)}")
        errors = [(n, (p - m) / m) for n, p, m in replay(Path(folder), label)]
        everything += [abs(e) for _, e in errors]
        if not errors:
            print(f"{folder[-50:]:50s}   0")
            continue
        absolute = [abs(e) for _, e in errors]
        misses = " ".join(f"{n}: {e:+.0%}" for n, e in errors if abs(e) > 0.10)
        within = sum(e <= 0.10 for e in absolute) / len(absolute)
        print(
            f"{folder[-50:]:50s} {len(errors):3d} {statistics.median(absolute):7.1%} {within:6.0%}  {misses}"
        )
    if everything:
        within = sum(e <= 0.10 for e in everything) / len(everything)
        print(f"{'all':50s} {len(everything):3d} {statistics.median(everything):7.1%} {within:6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
