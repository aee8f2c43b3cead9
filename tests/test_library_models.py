"""Models from a popular model library (Hugging Face transformers, random init from small
configs), compressed as their users get them: torch.fx cannot trace them (keyword-argument
wrappers, shape unpacking, attention dispatch), so they are captured with torch.export and
their Conv and Linear layers become the core's layers again, under their own names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autocompress
from autocompress import Finetune, Policy, Target, apply_policy, export
from autocompress.core import ModelError
from autocompress.evaluators.child import Infer, run_jobs, unwrap
from autocompress.export import check_model
from autocompress.graph import capture, compressible_layers
from autocompress.policies import LayerPolicy, LayerQuant, Pruning

transformers = pytest.importorskip("transformers")


def vit(kind: str = "vit") -> torch.nn.Module:
    """A 2-layer ViT (or DeiT) for the 8x8 digits: 16 patches of 2x2, 4 heads of 8."""
    torch.manual_seed(0)
    config = dict(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    if kind == "deit":
        return transformers.DeiTForImageClassification(transformers.DeiTConfig(**config)).eval()
    return transformers.ViTForImageClassification(transformers.ViTConfig(**config)).eval()


class PixelBert(torch.nn.Module):
    """A transformers BERT encoder over the 64 pixels of a digit as a sequence (each pixel
    embedded by a Linear and passed as ``inputs_embeds``): how a user feeds non-text
    sequences to a library encoder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=10,
        )  # fmt: skip
        self.embed = torch.nn.Linear(1, 32)
        self.bert = transformers.BertForSequenceClassification(config)

    def forward(self, images: torch.Tensor):
        return self.bert(inputs_embeds=self.embed(images.flatten(1).unsqueeze(-1)))


@pytest.fixture(scope="module")
def images(digits_loaders):
    return next(iter(digits_loaders[1]))[0]


def _openvino(ir_path, images: torch.Tensor, folder) -> np.ndarray:
    np.save(folder / "inputs.npy", images.numpy())
    unwrap(
        run_jobs([Infer(str(ir_path), str(folder / "inputs.npy"), str(folder / "out.npy"), batch_size=64)])[0]
    )
    return np.load(folder / "out.npy")


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_a_library_vit_is_captured_with_its_layer_names_and_runs_in_openvino_at_any_batch(kind, images):
    model = vit(kind)
    with pytest.raises(ModelError, match="torch.fx"):  # what the core met before
        autocompress.graph.trace(model)
    captured = capture(model, images[:1])
    layers = compressible_layers(captured)
    assert (
        "classifier" in layers and "vit.layers.1.mlp.fc1" in layers
        if kind == "vit"
        else "classifier" in layers
    )
    assert set(layers) <= set(compressible_layers(model))
    assert len(layers) == len(compressible_layers(model))  # every Conv and Linear is a layer again
    with torch.no_grad():
        assert torch.allclose(captured(images), model(images).logits, atol=1e-5)
    check_model(captured, images[:1])  # ONNX, OpenVINO at batch 2, agreeing with torch


def test_int8_and_pruning_of_a_library_vit_export_and_agree_with_torch(images, digits_loaders, tmp_path):
    model = vit()
    int8 = apply_policy(model, Policy.quantize(8, 8), digits_loaders[0], finetune=None)
    exported = export(int8, tmp_path / "int8")
    with torch.no_grad():
        reference = int8(images).numpy()
    openvino = _openvino(exported.ir_path, images, tmp_path)
    assert openvino.shape == reference.shape == (len(images), 10)
    assert np.corrcoef(openvino.ravel(), reference.ravel())[0, 1] > 0.99

    pruned = apply_policy(
        model, Policy(default=LayerPolicy(pruning=Pruning(ratio=0.5))), digits_loaders[0], finetune=None
    )
    for i in range(2):  # the MLP's hidden width: 64 -> 32
        assert pruned.module.get_submodule(f"vit.layers.{i}.mlp.fc1").out_features == 32
    assert "classifier" in pruned.history["pruning_skipped"]  # the output layer is never pruned
    exported = export(pruned, tmp_path / "pruned")
    with torch.no_grad():
        reference = pruned(images).numpy()
    # OpenVINO's f32 differs from torch by up to ~2e-3 on this ViT unpruned as well (measured)
    assert np.allclose(_openvino(exported.ir_path, images, tmp_path), reference, rtol=1e-2, atol=3e-3)


def test_a_search_on_a_library_vit_measures_its_trials(digits_loaders, tmp_path):
    train, val, test = digits_loaders
    result = autocompress.search(
        vit(),
        train,
        val,
        test_loader=test,
        space="compact",
        n_trials=2,
        max_accuracy_drop=0.5,  # a random-init model: the pipeline is under test, not its accuracy
        finetune=Finetune(epochs=0.2, recovery_epochs=0.2),
        final_finetune=None,
        target=Target(threads=1),
        hardware_proposals=False,
        workdir=tmp_path,
        progress=False,
    )
    finished = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(finished) == 2, [t.error for t in result.trials]
    assert all(t.measurements.latency_ms > 0 for t in finished)
    assert result.test is not None and result.test["samples"] == len(test.dataset)


def test_attention_projections_lose_whole_heads(images, digits_loaders):
    """Q, K and V lose the same whole heads: the pruned model computes exactly what the
    original computes with those heads' outputs cut from the output projection (channels
    thinned inside heads would be regrouped into other heads by the model's reshape)."""
    model = vit()
    attention = "vit.layers.0.attention"
    overrides = {f"{attention}.{p}_proj": LayerPolicy(pruning=Pruning(ratio=0.5)) for p in "qkv"}
    pruned = apply_policy(model, Policy(overrides=overrides), digits_loaders[0], finetune=None).module

    original = model.get_submodule(f"{attention}.q_proj").weight.detach()
    kept_q = pruned.get_submodule(f"{attention}.q_proj").weight.detach()
    kept = [int((original - row).abs().sum(1).argmin()) for row in kept_q]
    assert len(kept) == 16 and len({k // 8 for k in kept}) == 2  # two of the four heads, whole
    assert sorted(kept) == sorted({h * 8 + i for h in {k // 8 for k in kept} for i in range(8)})

    cut = vit()  # the same weights (seeded), the removed heads cut from o_proj's input
    removed = [c for c in range(32) if c not in kept]
    with torch.no_grad():
        cut.get_submodule(f"{attention}.o_proj").weight[:, removed] = 0
        assert torch.allclose(pruned(images), cut(images).logits, atol=1e-5)


def test_a_library_bert_encoder_quantizes_and_loses_whole_heads(images, digits_loaders, tmp_path):
    model = PixelBert().eval()
    captured = capture(model, images[:1])
    with torch.no_grad():
        assert torch.allclose(captured(images), model(images).logits, atol=1e-5)
    check_model(captured, images[:1])
    policy = Policy(default=LayerPolicy(quantization=LayerQuant(), pruning=Pruning(ratio=0.5)))
    compressed = apply_policy(model, policy, digits_loaders[0], finetune=None)
    query = compressed.module.get_submodule("bert.bert.encoder.layer.0.attention.self.query")
    assert query.out_features == 16  # 2 of 4 heads of 8
    exported = export(compressed, tmp_path / "bert")
    with torch.no_grad():
        reference = compressed(images).numpy()
    openvino = _openvino(exported.ir_path, images, tmp_path)
    assert np.corrcoef(openvino.ravel(), reference.ravel())[0, 1] > 0.99
