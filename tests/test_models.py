"""Model pieces: pooling, parameter groups (LLRD, no decay on 1-D params), re-init, save/load, losses."""
import pytest
import torch
import torch.nn.functional as F

from dontstop.config import ModelConfig
from dontstop.models import build_model, load_fold_model, parameter_groups, save_fold_model
from dontstop.train import compute_loss, resolve_loss


def model_cfg(backbone, **kw) -> ModelConfig:
    return ModelConfig(backbone=str(backbone), **kw)


@pytest.mark.parametrize("pooling", ["cls", "mean", "attention", "weighted_layers"])
def test_pooling_ignores_padding(tiny_bert, pooling):
    torch.manual_seed(0)
    model = build_model(model_cfg(tiny_bert, pooling=pooling, pooling_layers=2), n_outputs=3).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    short = model(ids, torch.ones_like(ids))
    padded_ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    assert short.shape == (1, 3)
    assert torch.allclose(short, model(padded_ids, mask), atol=1e-5)


def test_multi_sample_dropout_averages_heads_in_training(tiny_bert):
    model = build_model(model_cfg(tiny_bert, multi_sample_dropout=4, head_dropout=0.5), n_outputs=1)
    assert len(model.dropouts) == 4
    ids = torch.tensor([[2, 10, 11, 3]] * 8)
    model.train()
    torch.manual_seed(1)
    a = model(ids, torch.ones_like(ids))
    model.eval()
    b = model(ids, torch.ones_like(ids))
    assert not torch.allclose(a, b)  # dropout active in training, off in eval
    assert torch.allclose(b, model(ids, torch.ones_like(ids)))


def test_parameter_groups_layerwise_decay_and_no_decay_on_1d(tiny_bert):
    model = build_model(model_cfg(tiny_bert), n_outputs=1)
    groups = parameter_groups(model, lr=1e-4, head_lr=1e-3, layer_decay=0.5, weight_decay=0.01)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every trainable parameter is in exactly one group
    layers = model.backbone.encoder.layer  # 2 layers
    assert lr_of[id(layers[1].attention.self.query.weight)] == pytest.approx(1e-4)
    assert lr_of[id(layers[0].attention.self.query.weight)] == pytest.approx(0.5e-4)
    assert lr_of[id(model.backbone.embeddings.word_embeddings.weight)] == pytest.approx(0.25e-4)
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-3)
    assert wd_of[id(model.head.bias)] == 0.0 and wd_of[id(layers[0].output.LayerNorm.weight)] == 0.0
    assert wd_of[id(layers[0].output.dense.weight)] == 0.01


def test_reinit_top_layers_touches_only_the_top(tiny_bert):
    plain = build_model(model_cfg(tiny_bert), n_outputs=1)
    torch.manual_seed(5)
    reinit = build_model(model_cfg(tiny_bert, reinit_layers=1), n_outputs=1)
    top, low = "backbone.encoder.layer.1.output.dense.weight", "backbone.encoder.layer.0.output.dense.weight"
    p, r = dict(plain.named_parameters()), dict(reinit.named_parameters())
    assert not torch.equal(p[top], r[top]) and torch.equal(p[low], r[low])


def test_backbone_dropout_override(tiny_bert):
    model = build_model(model_cfg(tiny_bert, backbone_dropout=0.0), n_outputs=1)
    assert model.backbone.config.hidden_dropout_prob == 0.0
    kept = build_model(model_cfg(tiny_bert, backbone_dropout=None), n_outputs=1)
    assert kept.backbone.config.hidden_dropout_prob == 0.1


def test_save_and_load_round_trip(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    cfg = model_cfg(tiny_bert, pooling="attention")
    model = build_model(cfg, n_outputs=2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    save_fold_model(model, tok, tmp_path / "fold0", {"task": "multilabel", "n_outputs": 2, "model": cfg.__dict__,
                                                    "output_names": ["a", "b"]})
    loaded, tok2, head = load_fold_model(tmp_path / "fold0")
    ids = torch.tensor([[2, 10, 11, 3]])
    assert torch.allclose(model(ids, torch.ones_like(ids)), loaded(ids, torch.ones_like(ids)), atol=1e-6)
    assert head["output_names"] == ["a", "b"] and tok2.vocab == tok.vocab
    (tmp_path / "fold0" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_fold_model(tmp_path / "fold0")
    with pytest.raises(FileNotFoundError, match="no finished fold model"):
        load_fold_model(tmp_path / "fold9")


def test_missing_backbone_package_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="package 'no_such_model_pkg' is not installed"):
        build_model(ModelConfig(backbone="pkg:no_such_model_pkg"), n_outputs=1)


def test_loss_weights_and_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    expected = -(soft * F.log_softmax(logits, 1)).sum(1)
    assert torch.allclose(compute_loss("ce", logits, soft, None), expected.mean())
    weight = torch.tensor([1.0, 0.0])  # a zero-weight row does not count at all
    assert torch.allclose(compute_loss("ce", logits, soft, weight), expected[0])
    bce = compute_loss("bce", logits, torch.full_like(logits, 0.3), torch.tensor([2.0, 2.0]))
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 0.3)))
    assert resolve_loss("multiclass", "auto") == "ce" and resolve_loss("regression", "auto") == "mse"
    with pytest.raises(ValueError, match="does not fit task 'regression'"):
        resolve_loss("regression", "ce")
