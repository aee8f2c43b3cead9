"""Hardware-aware proposals (autocompress.search.proposals) on a real small model and real profiles:
the half-width ResNet-20 trained on digits, profiled by OpenVINO on this machine."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import numpy as np
import optuna
import pytest
import torch

import autocompress
from autocompress.core import Finetune
from autocompress.evaluators.child import ProfileLayers, run_jobs
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.target import Target
from autocompress.pruning import prune
from autocompress.search.objectives import DropEstimate
from autocompress.search.optuna_backend import RECALIBRATED, _propose_next
from autocompress.search.proposals import (
    FLOAT,
    INT8,
    NO_FASTER,
    LatencyModel,
    Observation,
    Profile,
    Recalibration,
    Sensitivities,
    Structure,
    Variant,
    fit_space,
    layout,
    plan,
    profile_variants,
    propose,
    student_points,
)
from autocompress.search.result import TrialRecord
from autocompress.search.trial import Measurements
from autocompress.search_spaces import build_space
from autocompress.search_spaces.knobs import start_point
from autocompress.search_spaces.to_optuna import distributions

TARGET = Target(precision_hint="f32")
# Deployed at 32x32 (the net is fully convolutional): at the digits' 8x8 every kernel takes
# 2-4 us and the time outside the kernels, which a neighbour's load moves, is most of the
# latency; at 32x32 the layers carry it, as in the models the search is for.
EXAMPLE = torch.zeros(1, 1, 32, 32)
FAST = {"profile_iterations": 100}


@pytest.fixture(scope="module")
def space(resnet):
    return build_space(resnet, "joint", example_input=EXAMPLE)


def make_plan(model, space, loaders, workdir):
    train, val, _ = loaders
    return plan(
        model,
        space,
        train_loader=train,
        val=Dataset(val),
        example_input=EXAMPLE,
        target=TARGET,
        max_drop=0.01,
        workdir=workdir,
        **FAST,
    )


@pytest.fixture(scope="module")
def hardware(resnet, space, digits_loaders, tmp_path_factory):
    """One plan, measured once for the module: (plan, its workdir, seconds)."""
    workdir = tmp_path_factory.mktemp("hardware")
    started = time.perf_counter()
    hardware_plan = make_plan(resnet, space, digits_loaders, workdir)
    return hardware_plan, workdir, time.perf_counter() - started


def test_structure_predicts_the_shapes_pruning_makes(resnet):
    structure = Structure.from_model(resnet, EXAMPLE)
    ratios = {g: (0.25, 0.5, 0.75)[i % 3] for i, g in enumerate(structure.group_channels)}
    pruned = dict(prune(resnet, {g: (r, "l2") for g, r in ratios.items()}, EXAMPLE).named_modules())
    for shape in structure.layers:
        module = pruned[shape.name]
        cin, cout = (
            (module.in_features, module.out_features)
            if isinstance(module, torch.nn.Linear)
            else (module.in_channels, module.out_channels)
        )
        assert structure.kept(shape, ratios) == pytest.approx((cin / shape.cin, cout / shape.cout)), shape
    # A block's second conv reads the first conv's channels and writes the residual group's.
    second = next(s for s in structure.layers if s.name == "layer2.1.conv2")
    assert second.in_groups == ("layer2.1.conv1",) and second.out_group == "layer2.0.downsample.0"
    assert second.producers == ("layer2.1.conv1",)


def test_every_layer_maps_to_its_kernels(hardware):
    hardware_plan, _, _ = hardware
    structure = hardware_plan.latency_model.structure
    names = {p.name: p for p in hardware_plan.profiles}
    assert {
        "fp32",
        "int8",
        "int8-alternate",
        "int8-ends",
        "prune0.5",
        "prune0.5-int8",
        "w4a8",
        "w6a8",
    } <= set(names)
    ends = {layer for layer, cls_ in names["int8-ends"].classes.items() if cls_ == "float"}
    assert ends == {structure.layers[0].name, structure.layers[-1].name}
    assert names["fp32"].latency_ratio == 1.0
    for profile in hardware_plan.profiles:
        assert profile.mapped_layers == len(structure.layers), profile.name
        assert set(profile.layer_us) == {s.name for s in structure.layers}
        # Kernels of one precision map directly; a one-sided or mixed precision adds conversions that
        # belong to no layer (charged to the next), measured at 0.62-0.93 of the time here.
        if profile.precision in (FLOAT, INT8):
            assert profile.coverage > 0.8, (profile.name, profile.coverage)
        assert profile.coverage > 0.4, (profile.name, profile.coverage)
    assert names["int8"].classes["layer1.0.conv1"] == INT8
    assert names["prune0.5"].kept["layer1.0.conv2"] == pytest.approx((0.5, 0.5))


def test_latency_model_predicts_variants_it_was_not_fitted_on(hardware, resnet, space, digits_loaders):
    hardware_plan, workdir, _ = hardware
    model = hardware_plan.latency_model
    train, _, _ = digits_loaders
    inputs, targets = next(iter(train))
    held_out = [
        Variant("fp32"),
        Variant("prune0.375-int8", 0.375, 8, 8),  # between the profiled widths
        Variant("proposal", params=hardware_plan.proposals[-1].params),
    ]
    profiles = profile_variants(
        resnet,
        hardware_plan.space,
        held_out,
        structure=model.structure,
        calibration=[(inputs[:16], targets[:16])],
        example_input=EXAMPLE,
        target=TARGET,
        workdir=workdir / "hardware",
        iterations=FAST["profile_iterations"],
    )
    for name in ("prune0.375-int8", "proposal"):
        measured, predicted = (
            profiles[name].latency_ratio,
            model.predict_profile(profiles[name]),
        )
        # Re-measuring one model varies 2-16% on an idle machine and up to 30% with others'
        # tests running on its 2 cores (seen here); the model must stay within 30%.
        assert abs(predicted - measured) / measured < 0.30, (name, predicted, measured)
    # (recall=False: the proposal may be a profiled configuration, then predicted by its measurement)
    assert model.predict(hardware_plan.proposals[-1].params, recall=False) == pytest.approx(
        model.predict_profile(profiles["proposal"])
    )
    # Pruning and INT8 must both show in the layers' sum (what the integer program adds up).
    structure = model.structure
    full = {s.name: (1.0, 1.0) for s in structure.layers}
    int8 = dict.fromkeys(full, INT8)
    assert model.predict_config(full, int8, recall=False) < model.predict_config(full, {}, recall=False)
    halved = {
        s.name: structure.kept(s, dict.fromkeys(structure.group_channels, 0.5)) for s in structure.layers
    }
    assert model.predict_config(halved, int8, recall=False) < model.predict_config(full, int8, recall=False)
    # Between profiled widths a kernel costs as the wider one: never more than unpruned.
    assert model.predict_config(profiles["prune0.375-int8"].kept, int8, recall=False) <= (
        model.predict_config(full, int8, recall=False)
    )
    # A configuration profiled before is predicted by its measurement; one never measured by its layers.
    assert model.predict_config(full, int8) == pytest.approx(
        next(p.latency_ratio for p in hardware_plan.profiles if p.name == "int8")
    )
    assert model.predict_config(profiles["prune0.375-int8"].kept, int8) == model.predict_profile(
        profiles["prune0.375-int8"]
    )


def test_a_layer_pruned_on_both_sides_is_charged_by_each_side():
    """Profiles prune a layer's input and output alike; a point can prune them differently.
    With a slow width between two fast ones (as 24 of 32 channels ran INT8 on an AMX Xeon),
    16 channels in and 32 out must cost the geometric mean of the profiled 16x16 and 32x32,
    not the 24x24 that has the same in x out product."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    example = torch.zeros(1, 1, 8, 8)
    structure = Structure.from_model(net, example)
    first, middle, last = structure.layers
    assert [s.both_sides for s in structure.layers] == [False, True, False]
    middle_us = {1.0: 100.0, 0.75: 100.0, 0.5: 25.0}  # the slow width: 24 channels

    def profile(kept: float) -> Profile:
        layer_us = {first.name: 10.0 * kept, middle.name: middle_us[kept], last.name: 5.0 * kept}
        total = sum(layer_us.values())
        return Profile(
            name=f"keep{kept}",
            precision=FLOAT,
            ratio=1 - kept,
            layer_us=layer_us,
            kept={first.name: (1.0, kept), middle.name: (kept, kept), last.name: (kept, 1.0)},
            classes=dict.fromkeys(layer_us, FLOAT),
            total_us=total,
            direct_us=total,
            mapped_layers=3,
            latency_ms=total / 1e3,
            latency_ratio=total / 115.0,
        )

    model = LatencyModel.fit(
        [profile(1.0), profile(0.75), profile(0.5)],
        structure,
        build_space(net, "joint", example_input=example),
    )
    full = model.layer_us(middle, (1.0, 1.0), FLOAT)
    assert model.layer_us(middle, (0.5, 0.5), FLOAT) / full == pytest.approx(0.25, rel=1e-6)
    assert model.layer_us(middle, (0.5, 1.0), FLOAT) / full == pytest.approx(0.5, rel=1e-6)
    assert model.layer_us(middle, (1.0, 0.5), FLOAT) / full == pytest.approx(0.5, rel=1e-6)
    # One side pruned: the first layer by its output, the last by its input.
    assert model.layer_us(first, (1.0, 0.5), FLOAT) / model.layer_us(
        first, (1.0, 1.0), FLOAT
    ) == pytest.approx(0.5)
    assert model.layer_us(last, (0.5, 1.0), FLOAT) / model.layer_us(last, (1.0, 1.0), FLOAT) == pytest.approx(
        0.5
    )


def test_proposals_are_distinct_valid_points_within_their_budgets(hardware):
    hardware_plan, _, _ = hardware
    assert hardware_plan.proposals
    names = set(hardware_plan.space.names())
    seen = []
    for proposal in hardware_plan.proposals:
        assert set(proposal.params) == names
        hardware_plan.space.policy(proposal.params)  # raises if not a point of the space
        assert proposal.params not in seen
        seen.append(proposal.params)
        assert proposal.predicted_drop <= proposal.budget + 1e-9
        assert proposal.predicted_drop == pytest.approx(hardware_plan.predict_drop(proposal.params))
    latencies = [p.predicted_latency_ratio for p in sorted(hardware_plan.proposals, key=lambda p: p.budget)]
    assert latencies == sorted(latencies, reverse=True)  # a larger budget is never slower


def _precision(space, layer, integer):
    """The values that make ``layer`` INT8 or float, however the space sets that (bits that
    may be float, or bits and keep_float when fit_space left one-sided float out)."""
    if f"keep_float:{layer}" in space.names():
        return {f"weight_bits:{layer}": 8, f"activation_bits:{layer}": 8, f"keep_float:{layer}": not integer}
    bits = 8 if integer else None
    return {f"weight_bits:{layer}": bits, f"activation_bits:{layer}": bits}


def test_the_integer_program_finds_the_brute_force_optimum(hardware):
    hardware_plan, _, _ = hardware
    space = hardware_plan.space
    reference = start_point(space.searched, 0.0)
    # Two coupled groups (the stage-1 residual group feeds and is fed by the block's inner
    # group) and two layers, one of them the other's consumer: products and precision changes.
    free_groups = ["pruning_ratio:conv1", "pruning_ratio:layer1.0.conv1"]
    free_layers = ["layer1.0.conv1", "layer1.0.conv2"]
    free = free_groups + [name for layer in free_layers for name in _precision(space, layer, True)]
    small = space.fix(**{n: v for n, v in reference.items() if n not in free})
    model = LatencyModel.fit(list(hardware_plan.profiles), hardware_plan.latency_model.structure, small)
    structure = model.structure
    # Synthetic drops that make the budget bind: a group costs its ratio x its channels / 100.
    pruning = {g: {r: r * c / 100 for r in (0.25, 0.5, 0.75)} for g, c in structure.group_channels.items()}
    sens = Sensitivities(0.9, 100, pruning, dict.fromkeys(free_layers, 0.004))
    candidates = []  # (predicted drop, predicted latency) of every point the program chooses among
    for ratios in itertools.product([i * 0.125 for i in range(7)], repeat=len(free_groups)):
        for precisions in itertools.product((True, False), repeat=len(free_layers)):
            point = {n: v for n, v in reference.items() if n in small.names()}
            point.update(zip(free_groups, ratios))
            for layer, integer in zip(free_layers, precisions):
                point.update(_precision(space, layer, integer))
            # the program minimises the layers' sum (a measured configuration's recall is no sum)
            candidates.append(
                (sens.predict(*layout(small, structure, point)), model.predict(point, recall=False))
            )
    for budget in (0.0, 0.003, 0.01, 0.05):
        best = min(latency for drop, latency in candidates if drop <= budget + 1e-12)
        (proposal,) = propose(small, model, sens, max_drop=budget or 1e-9, multiples=(1.0,))
        assert proposal.predicted_drop <= budget + 1e-9
        assert model.predict(proposal.params, recall=False) == pytest.approx(best, rel=1e-9), budget
        assert proposal.predicted_latency_ratio == model.predict(proposal.params, recall=False)
    # The layers no decision sets (INT8 at the reference) spend the budget too.
    costly = Sensitivities(0.9, 100, pruning, {s.name: 0.004 for s in structure.layers})
    assert propose(small, model, costly, max_drop=0.01, multiples=(1.0,)) == []


def test_fit_space_leaves_out_only_bit_widths_measured_no_faster(space, hardware):
    fitted, reasons = fit_space(space, {INT8: 0.50, "w4a8": 0.499, "w8a6": 0.40}, "latency")
    weight_bits = {c for d in fitted.searched if d.knob == "weight_bits" for c in d.choices}
    activation_bits = {c for d in fitted.searched if d.knob == "activation_bits" for c in d.choices}
    assert weight_bits == {8, 6, None}  # 4 no faster than INT8; 6 not profiled: kept
    assert activation_bits == {8, 6, None}  # 6 measured 20% faster: kept
    assert any("weight_bits 4 left out" in r and "0.499" in r for r in reasons)
    assert any("weight_bits 6 kept" in r and "not profiled" in r for r in reasons)
    for point in fitted.start_points:
        fitted.policy(point)
    assert fit_space(space, {INT8: 0.5, "w4a8": 0.9}, "size")[0] is space
    assert fit_space(space, {INT8: 0.5, "w4a8": 0.9}, ["latency", "size"])[0] is space

    # One side float measured no faster than FP32: a layer is quantized on both sides or kept float.
    one_sided = {INT8: 0.5, FLOAT: 1.0, "w8af": 1.0, "wfa8": 1.3}
    tied, reasons = fit_space(space, one_sided, "latency")
    assert any("float on one side of a layer left out" in r and "1.300" in r for r in reasons)
    bits = [d for d in tied.searched if d.knob in ("weight_bits", "activation_bits")]
    assert bits and all(None not in d.choices for d in bits)
    assert {d.layers for d in tied.searched if d.knob == "keep_float"} == {d.layers for d in bits}
    for point in tied.start_points:
        assert not any(point[d.name] for d in tied.searched if d.knob == "keep_float")  # INT8 starts
        tied.policy(point)
    layer = space.layers[0]
    floated = tied.policy({**tied.start_points[0], f"keep_float:{layer}": True})
    assert floated.for_layer(layer).quantization is None
    faster = fit_space(space, {**one_sided, "wfa8": 0.9}, "latency")[0]
    assert not any(d.knob == "keep_float" for d in faster.dimensions)  # measured faster: kept as is
    unprofiled, reasons = fit_space(space, {INT8: 0.5, FLOAT: 1.0}, "latency")
    assert unprofiled is space and any("not both profiled" in r for r in reasons)

    # On the real profiles, a value is gone exactly when its variant measured no faster than INT8.
    hardware_plan, _, _ = hardware
    measured = {p.name: p.latency_ratio for p in hardware_plan.profiles}
    kept = {c for d in hardware_plan.space.searched if d.knob == "weight_bits" for c in d.choices}
    for bits in (4, 6):
        slower = measured[f"w{bits}a8"] >= measured["int8"] * (1 - NO_FASTER)
        assert (bits not in kept) == slower, (bits, measured)


def test_sensitivities_cover_every_group_and_layer(hardware, digits_loaders):
    hardware_plan, _, _ = hardware
    sens = hardware_plan.sensitivities
    structure = hardware_plan.latency_model.structure
    _, val, _ = digits_loaders
    assert sens.samples == len(val.dataset)  # 180 < 500: all of them
    assert set(sens.pruning) == set(structure.group_channels)
    assert all(set(drops) == {0.25, 0.5, 0.75} for drops in sens.pruning.values())
    assert set(sens.quantization) == {s.name for s in structure.layers}
    assert {"int8_everywhere", "prune_0.5_everywhere"} <= set(sens.checks)
    for group in structure.group_channels:
        assert sens.group_drop(group, 0.0) == 0.0
        assert sens.group_drop(group, 0.25) <= sens.group_drop(group, 0.5) <= sens.group_drop(group, 0.75)
    interpolated = Sensitivities(1.0, 10, {"g": {0.5: 0.1, 0.75: 0.05}}, {})
    assert interpolated.group_drop("g", 0.25) == pytest.approx(0.05)
    assert interpolated.group_drop("g", 0.75) == pytest.approx(0.1)  # never below a smaller cut's drop


def test_trials_rescale_the_drop_and_recalibrate_the_latency_model(hardware):
    hardware_plan, _, _ = hardware
    trials = [
        Observation(
            p.params,
            drop=0.1 * p.predicted_drop,  # fine-tuning recovered 90% of the predicted drop
            # The target runs slower than profiled (than predicted, recall included: a proposal
            # may be a profiled configuration, predicted by its measurement, not the layers' sum).
            latency_ratio=1.3 * hardware_plan.latency_model.predict(p.params),
        )
        for p in hardware_plan.proposals
    ]
    pairs = [(t.params, t.latency_ratio) for t in trials]
    before = hardware_plan.latency_model.report(pairs)
    updated = hardware_plan.update_from_trials(trials)
    after = updated.latency_model.report(pairs)
    assert updated.drop_scale < 0.5
    assert updated.trials_seen == len(trials)
    assert after.median_abs_rel_error < before.median_abs_rel_error / 2
    assert before.within_10pct == 0 and after.within_10pct > 0
    assert not any(p.params in [t.params for t in trials] for p in updated.proposals)
    assert updated.to_dict()["drop_scale"] == updated.drop_scale


def test_a_second_plan_reads_the_cache(hardware, resnet, space, digits_loaders):
    hardware_plan, workdir, _ = hardware
    again = make_plan(resnet, space, digits_loaders, workdir)
    # Read back, not measured again: a re-measured latency would differ in its last digits.
    assert [p.latency_ms for p in again.profiles] == [p.latency_ms for p in hardware_plan.profiles]
    assert again.sensitivities == hardware_plan.sensitivities
    assert again.points == hardware_plan.points
    assert again.students == hardware_plan.students


def test_profile_job_rejects_bad_requests():
    no_models, no_iterations = run_jobs(
        [ProfileLayers([], TARGET.to_dict()), ProfileLayers(["x.xml"], TARGET.to_dict(), iterations=0)]
    )
    assert "non-empty list" in no_models["error"]
    assert "iterations must be an int >= 1" in no_iterations["error"]


def test_a_latency_search_starts_from_the_hardware_aware_proposals(resnet, digits_loaders, tmp_path):
    """search() plans before the first trial: the fitted space is what the study searches, its
    first trial is the first proposal, and result.json reports the plan with its latency
    model's error on the trials that followed."""
    train, val, _ = digits_loaders
    result = autocompress.search(
        resnet,
        train,
        val,
        space="joint",
        n_trials=1,
        finetune=Finetune(epochs=0.1, recovery_epochs=0.1),
        target=Target(threads=1),
        max_accuracy_drop=0.05,
        confirm_fraction=0.0,
        workdir=tmp_path,
        progress=False,
    )
    hardware = result.hardware
    assert hardware is not None and hardware["proposals"], hardware
    first = hardware["proposals"][0]["params"]
    assert {k: v for k, v in result.trials[0].params.items() if k in first} == first
    assert hardware["latency_model_on_trials"]["n"] in (0, 1)
    # The last trial is predicted too, though no proposal followed it.
    completed = sum(t.state == "COMPLETE" for t in result.trials)
    assert hardware["latency_model_prequential"]["n"] == completed
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["hardware"]["proposals"][0]["params"] == first


def _measured_trial(number, params, drop, latency_ratio, user_attrs=None):
    """A finished trial as a search records it (a TrialRecord and its Optuna twin): what a
    fine-tuned, measured candidate would report, here set to what the test needs."""
    margin = 0.004  # the 90% bound sits this far above the measured drop
    estimate = DropEstimate(
        drop, drop - margin, drop + margin, 0.9, 1000, 0.95, 0.95 - drop, drop + margin - 0.01
    )
    measurements = Measurements(
        drop=estimate,
        latency_ms=latency_ratio,
        latency_ratio=latency_ratio,
        throughput=1 / latency_ratio,
        size_bytes=1,
        size_ratio=1.0,
        parameters=1,
        flops=1,
        runtime_precision=None,
        latency_cached=False,
        fingerprint=str(number),
        ir_path="",
        onnx_path="",
    )
    return TrialRecord(
        number, "COMPLETE", dict(params), None, measurements, (latency_ratio,), estimate.violation, 1.0
    )


def test_recalibration_predicts_each_trial_before_it_learns_from_it(hardware):
    hardware_plan, _, _ = hardware
    # The model's own points only (the student steps: the next test).
    hardware_plan = dataclasses.replace(hardware_plan, students=())
    recalibration = Recalibration(hardware_plan)
    trials = [
        _measured_trial(
            i,
            p.params,
            drop=0.1 * p.predicted_drop,
            # what the trial is predicted out of sample, recall included (see the test above)
            latency_ratio=1.3 * hardware_plan.latency_model.predict(p.params),
        )
        for i, p in enumerate(hardware_plan.proposals)
    ]
    recalibration.observe(trials[:1])
    recalibration.observe(trials)  # every trial so far, again: each is predicted once, before its refit
    numbers = [n for n, _, _ in recalibration.prequential]
    assert numbers == list(range(len(trials)))
    first_predicted, first_measured = recalibration.prequential[0][1:]
    assert first_measured == pytest.approx(1.3 * first_predicted)  # the profiled model, out of sample
    later = [abs(p - m) / m for _, p, m in recalibration.prequential[1:]]
    assert later and max(later) < 0.3 / 1.3  # the refitted model learnt the target runs slower
    assert recalibration.plan.drop_scale < 0.5 and recalibration.margin == pytest.approx(0.004)

    point = recalibration.next_point(t.params for t in trials)
    assert point is not None and point not in [t.params for t in trials]
    budget = hardware_plan.max_drop - recalibration.margin
    assert recalibration.plan.predict_drop(point) <= budget + 1e-9
    assert recalibration.next_point([*(t.params for t in trials), point]) != point  # never proposed twice
    report = json.loads(json.dumps(recalibration.report()))
    assert report["latency_model_prequential"]["n"] == len(trials)
    assert report["recalibrated_proposals"] == 2


def test_students_are_timed_and_stepped_through_by_bisection_on_their_latency(hardware):
    """Every offered student shape at each pruning ratio is timed untrained; the search then
    bisects through those faster than its fastest confirmation candidate: a failed student
    rules out the faster ones, a candidate moves the bar."""
    hardware_plan, _, _ = hardware
    students = hardware_plan.students
    space = hardware_plan.space
    assert len(students) == len(student_points(space)) >= 6
    for timing in students:
        assert timing.params["student"] is True and space.policy(timing.params).student is not None
        assert 0 < timing.latency_ratio < 2
    ratios = sorted(t.latency_ratio for t in students)
    assert ratios[0] < 0.7 * ratios[-1]  # the shapes differ in latency, as measured
    said = " ".join(hardware_plan.reasons)
    assert f"{len(students)} students timed untrained" in said
    assert len(hardware_plan.to_dict()["students"]) == len(students)

    recalibration = Recalibration(hardware_plan)
    bar = ratios[-1]  # a candidate trial as slow as the slowest student
    recalibration.observe([_measured_trial(0, space.start_points[0], drop=0.0, latency_ratio=bar)])
    open_ = [t for t in students if t.latency_ratio < bar * (1 - NO_FASTER)]
    step = recalibration.student_step([space.start_points[0]])
    assert step is not None and step in open_
    faster = [t for t in open_ if t.latency_ratio < step.latency_ratio]
    slower = [t for t in open_ if t.latency_ratio > step.latency_ratio]
    assert abs(len(faster) - len(slower)) <= 1  # the middle one
    # Stopped early for accuracy: only slower students are left.
    after_stop = recalibration.student_step([step.params], stopped=[step.params])
    assert after_stop is not None and step.latency_ratio < after_stop.latency_ratio < bar
    # Measured beyond the allowed drop: the same.
    failed = Recalibration(hardware_plan)
    failed.observe(
        [
            _measured_trial(0, space.start_points[0], drop=0.0, latency_ratio=bar),
            _measured_trial(1, step.params, drop=0.02, latency_ratio=step.latency_ratio),
        ]
    )
    assert failed.incumbent == bar and failed.failed == [step.params]
    after_failure = failed.student_step([space.start_points[0], step.params])
    assert after_failure is not None and step.latency_ratio < after_failure.latency_ratio < bar
    # Within it: the bar moves to it, and only faster students are left.
    recalibration.observe([_measured_trial(1, step.params, drop=0.0, latency_ratio=step.latency_ratio)])
    assert recalibration.incumbent == step.latency_ratio and not recalibration.failed
    after_success = recalibration.student_step([step.params])
    assert after_success is None or after_success.latency_ratio < step.latency_ratio * (1 - NO_FASTER)
    # next_point takes a student step when it is faster than the model's own proposal.
    point = recalibration.next_point([space.start_points[0], step.params])
    own = propose(
        space,
        recalibration.plan.latency_model,
        recalibration.plan.sensitivities,
        max_drop=hardware_plan.max_drop,
        multiples=(1.0, 0.5),
        drop_scale=recalibration.plan.drop_scale,
        exclude=[space.start_points[0], step.params],
    )
    if after_success is not None and (
        not own or after_success.latency_ratio < own[0].predicted_latency_ratio
    ):
        assert point == after_success.params and recalibration.student_steps == 1
    else:
        assert point is None or point == own[0].params


def test_the_optuna_search_queues_recalibrated_proposals_between_sampled_trials(hardware):
    hardware_plan, _, _ = hardware
    space = hardware_plan.space
    dists = distributions(space)
    study = optuna.create_study(direction="minimize")

    def add(number, params, user_attrs=None):
        trial = _measured_trial(number, params, drop=0.002, latency_ratio=0.5)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=0.5,
                user_attrs={"measurements": trial.measurements.to_dict(), **(user_attrs or {})},
            )
        )
        return study.trials[-1]

    recalibration = Recalibration(hardware_plan)
    last = add(0, hardware_plan.proposals[0].params)
    _propose_next(study, last, recalibration, space)
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["proposal"] == RECALIBRATED
    assert waiting[0].system_attrs["fixed_params"] == recalibration.proposed[0]
    _propose_next(study, last, recalibration, space)  # a queued point is still waiting: nothing more
    assert sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials) == 1

    study = optuna.create_study(direction="minimize")
    recalibration = Recalibration(hardware_plan)
    last = add(0, hardware_plan.proposals[0].params, {"proposal": RECALIBRATED})
    _propose_next(study, last, recalibration, space)  # after a proposal, the sampler's turn
    assert not any(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    assert recalibration.prequential  # it still learnt from the trial


def test_a_layer_fit_never_predicts_fewer_channels_slower():
    from autocompress.search.proposals import LayerFit

    # a noisy profile: the 0.5625 width measured slower than the full one
    fit = LayerFit.through([(0.0625, 2.0), (0.25, 3.0), (0.5625, 7.0), (1.0, 6.0), (1.0, 6.4)])
    assert list(fit.us) == sorted(fit.us) and fit(0.5625) == pytest.approx((7.0 + 6.0 + 6.4) / 3)
    assert fit(0.25) == 3.0  # points that were in order stay as measured


def test_profiles_are_timed_on_the_calibration_inputs_only_when_they_are_arrays():
    from autocompress.search.proposals import _inputs_of

    images = _inputs_of([(torch.ones(2, 1, 3, 3), torch.zeros(2)), (torch.zeros(1, 1, 3, 3), torch.ones(1))])
    assert images.shape == (3, 1, 3, 3) and images.dtype == np.float32 and images[:2].all()
    assert _inputs_of([({"input_ids": torch.ones(2, 4)}, torch.zeros(2))]) is None  # a dict: random inputs
    assert _inputs_of([]) is None
