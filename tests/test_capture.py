"""Models as users bring them: outputs other than a tensor, optional forward() arguments,
torch's own transformer layers, batch-dependent values; and the check that stops a search
before any work when the core cannot take a model."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

import autocompress
from autocompress import Policy, apply_policy, export
from autocompress.core import ModelError
from autocompress.evaluators.child import Infer, run_jobs, unwrap
from autocompress.export import check_model
from autocompress.graph import capture, select_output

Pair = collections.namedtuple("Pair", ["logits", "aux"])


class TwoHeads(nn.Module):
    """A classifier that also returns an auxiliary head, as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 3)

    def forward(self, x):
        h = self.body(x)
        logits, aux = self.classifier(h), self.aux(h)
        if self.kind == "dict":
            return {"aux": aux, "logits": logits}
        if self.kind == "namedtuple":
            return Pair(logits, aux)
        return aux, logits  # a tuple: the logits second


class TinyViT(nn.Module):
    """A vision transformer in the style of popular libraries: a class token expanded to the
    batch, torch's TransformerEncoder, and optional forward() arguments."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, 2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x, attn_mask=None, is_causal=False):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(self.encoder(x, mask=attn_mask, is_causal=is_causal)[:, 0])


class ValueBranch(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


@pytest.fixture(scope="module")
def images(digits_loaders):
    return next(iter(digits_loaders[1]))[0]


@pytest.mark.parametrize(
    "kind, output, expected",
    [
        ("dict", None, "classifier"),  # the "logits" entry
        ("namedtuple", None, "classifier"),  # its logits field
        ("tuple", None, "aux"),  # no logits: the first tensor
        ("tuple", 1, "classifier"),
        ("dict", "aux", "aux"),
        ("tuple", lambda outputs: outputs[1], "classifier"),
    ],
)
def test_the_selected_output_is_what_the_compressed_model_returns(
    kind, output, expected, images, digits_loaders
):
    model = TwoHeads(kind).eval()
    compressed = apply_policy(model, Policy.quantize(8, 8), digits_loaders[0], finetune=None, output=output)
    with torch.no_grad():
        reference = getattr(model, expected)(model.body(images))
        got = compressed(images)
    assert isinstance(got, torch.Tensor) and got.shape == reference.shape
    assert (
        torch.corrcoef(torch.stack([got.flatten(), reference.flatten()]))[0, 1] > 0.99
    )  # INT8 of the same head
    assert expected in dict(compressed.module.named_modules())  # layers keep their names


def test_an_output_that_names_nothing_is_one_clear_error(images):
    with pytest.raises(ModelError, match=r"output='nope' does not name .*keys \['aux', 'logits'\]"):
        capture(TwoHeads("dict"), images[:1], "nope")
    with pytest.raises(ModelError, match="no tensor in it; pass output="):
        select_output({"name": "x"}, None)


def test_a_transformer_with_optional_arguments_quantizes_exports_and_runs_at_any_batch(
    images, digits_loaders, tmp_path
):
    """fx pins the optional arguments to their defaults (traced, is_causal became a tensor);
    export switches off torch's fused encoder kernels (no ONNX for them); the class token's
    batch stays symbolic, so the IR exported at batch 1 runs the accuracy pass at batch 64."""
    model = TinyViT().eval()
    for policy in (Policy(), Policy.quantize(8, 8)):
        compressed = apply_policy(model, policy, digits_loaders[0], finetune=None)
        exported = export(compressed, tmp_path / str(len(policy.to_dict())))
        np.save(tmp_path / "inputs.npy", images.numpy())
        unwrap(
            run_jobs(
                [
                    Infer(
                        str(exported.ir_path),
                        str(tmp_path / "inputs.npy"),
                        str(tmp_path / "out.npy"),
                        batch_size=64,
                    )
                ]
            )[0]
        )
        with torch.no_grad():
            reference = compressed(images).numpy()
        openvino = np.load(tmp_path / "out.npy")
        assert openvino.shape == reference.shape == (len(images), 10)
        assert np.corrcoef(openvino.ravel(), reference.ravel())[0, 1] > 0.99
    assert torch.backends.mha.get_fastpath_enabled()  # switched off for the export only


def test_check_model_names_the_construct_before_any_work(images):
    assert check_model(TinyViT().eval(), images[:1]) is not None
    with pytest.raises(ModelError, match="cannot trace ValueBranch with torch.fx"):
        check_model(ValueBranch(), images[:1])


def test_a_search_on_an_untraceable_model_stops_before_the_baseline(digits_loaders, tmp_path):
    train, val, _ = digits_loaders
    with pytest.raises(ModelError, match="cannot trace ValueBranch"):
        autocompress.search(ValueBranch(), train, val, n_trials=2, workdir=tmp_path, progress=False)
    assert not (tmp_path / "search.db").exists()  # no study, no baseline: nothing was started


def test_default_pruning_of_a_transformer_thins_its_mlps_and_says_what_it_left(digits_loaders, images):
    from autocompress.policies import LayerPolicy, Pruning

    model = TinyViT().eval()
    policy = Policy(default=LayerPolicy(pruning=Pruning(ratio=0.5)))
    compressed = apply_policy(model, policy, digits_loaders[0], finetune=None)
    for i in range(2):  # the MLP's hidden width: 64 -> 32
        assert compressed.module.get_submodule(f"encoder.layers.{i}.linear1").out_features == 32
    skipped = compressed.history["pruning_skipped"]
    assert "LayerNorm" in skipped["patch"]["reason"]  # the residual stream
    assert "output layer 'head'" in skipped["head"]["reason"]
    assert compressed(images).shape == (len(images), 10)
