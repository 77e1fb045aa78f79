import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from perceiver_med.models import (Perceiver, ViTRolloutCNN, attention_rollout, build_model,
                                  default_config, rollout_map)

# Keys left out take train's defaults (a conv stem, deep supervision, the plain CNN): the tiny models say what they
# leave out of those.
PLAIN = {"stem_widths": [], "deep_supervision": 0.0}
OLD_CNN = {"pool": "mean", "block": "residual", "norm": "none"}
TINY = {
    "perceiver": {"name": "perceiver", "in_channels": 1, "image_size": 16, "num_classes": 3, "num_freq_bands": 4,
                  "num_latents": 8, "latent_dim": 32, "cross_dim_head": 16, "latent_heads": 2,
                  "latent_dim_head": 16, "self_per_cross_attn": 1, "num_iterations": 3, **PLAIN},
    "perceiver-patches": {"name": "perceiver", "in_channels": 3, "image_size": 16, "num_classes": 3,
                          "patch_size": 4, "num_latents": 8, "latent_dim": 32, "cross_heads": 2,
                          "cross_dim_head": 8, "latent_heads": 2, "latent_dim_head": 16, "num_iterations": 2,
                          "max_freq": 16.0, **PLAIN},
    "vit": {"name": "vit", "in_channels": 1, "image_size": 16, "patch_size": 4, "num_classes": 3, "dim": 32,
            "depth": 2, "heads": 2},
    "perceiver-stem": {"name": "perceiver", "in_channels": 1, "image_size": 16, "num_classes": 3, "stem_widths": [4, 8],
                       "num_latents": 8, "latent_dim": 32, "cross_dim_head": 16, "latent_heads": 2,
                       "latent_dim_head": 16, "self_per_cross_attn": 1, "num_iterations": 2, "max_freq": 16.0,
                       "deep_supervision": 0.0},
    "vit-stem": {"name": "vit", "in_channels": 1, "image_size": 16, "patch_size": 1, "stem_widths": [4, 8],
                 "num_classes": 3, "dim": 32, "depth": 2, "heads": 2, "pool": "mean"},
    "cnn": {"name": "cnn", "in_channels": 1, "num_classes": 3, "widths": [8, 16], **OLD_CNN},
    "vit-rollout-cnn": {"name": "vit-rollout-cnn", "vit": {"in_channels": 1, "image_size": 16, "patch_size": 4,
                                                           "num_classes": 3, "dim": 32, "depth": 2, "heads": 2,
                                                           "dropout": 0.0, **PLAIN},
                        "cnn": {"widths": [8, 16], **OLD_CNN}, "zero_rollout": False, "residual": False},
}


def hybrid_options():
    """The tiny hybrid's keyword arguments, less the two its tests set themselves."""
    return {k: v for k, v in TINY["vit-rollout-cnn"].items() if k not in ("name", "zero_rollout", "residual")}


def _input(name, batch=4):
    channels = 3 if name == "perceiver-patches" else 1
    return torch.rand(batch, channels, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(TINY))
def test_shape_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(TINY[name])
    assert model.num_parameters == sum(p.numel() for p in model.parameters())
    x = _input(name)
    if name == "vit-rollout-cnn":  # each stage trains its own part
        model.vit(x).sum().backward()
        model(x).sum().backward()
    else:
        logits = model(x)
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
        logits.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("name", list(TINY))
def test_eval_is_deterministic_and_weights_round_trip_through_safetensors(name, tmp_path):
    model = build_model(TINY[name]).eval()
    x = _input(name)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    clone = build_model(TINY[name]).eval()
    clone.load_state_dict(load_file(tmp_path / "w.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(clone(x), first)


def test_perceiver_tells_an_image_from_its_mirror_image():
    torch.manual_seed(0)
    model = build_model(TINY["perceiver"]).eval()
    x = _input("perceiver")
    with torch.no_grad():
        assert (model(x) - model(x.flip(-1))).abs().max() > 1e-4


def test_perceiver_weight_sharing_counts():
    def count(sharing):
        return build_model({**TINY["perceiver"], "weight_sharing": sharing}).num_parameters
    assert count("all") < count("after_first") < count("none")


@pytest.mark.parametrize("context_dim,heads,elements,context_space", [(27, 1, 256, True), (27, 2, 256, True),
                                                                      (90, 2, 16, False)])
@pytest.mark.parametrize("return_attention", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_cross_attention_equals_the_textbook_keys_and_values(context_dim, heads, elements, context_space,
                                                             return_attention, bf16):
    """Both orders of the cross-attention give the numbers and gradients of softmax(q k^T / sqrt(d)) v in fp32,

    and under CPU bf16 autocast (where it runs other kernels) the same up to bf16 rounding."""
    from perceiver_med.models.perceiver import CrossAttention

    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim, heads=heads, dim_head=64)
    with torch.no_grad():
        for norm in (attn.norm, attn.norm_context):
            norm.weight.normal_()
            norm.bias.normal_()
    assert attn.attends_in_context_space(elements, 64) is context_space
    latents, context = torch.randn(3, 64, 32), torch.randn(3, elements, context_dim)

    def textbook():
        q = attn.to_q(attn.norm(latents)).unflatten(-1, (heads, 64)).transpose(1, 2)
        k, v = (t.unflatten(-1, (heads, 64)).transpose(1, 2)
                for t in attn.to_kv(attn.norm_context(context)).chunk(2, dim=-1))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        return attn.to_out((weights @ v).transpose(1, 2).flatten(2)), weights

    results = []
    for compute, autocast in ((lambda: attn(latents, context, return_attention), bf16), (textbook, False)):
        attn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, weights = compute()
        out.float().square().sum().backward()
        results.append((out.float(), weights, [p.grad.clone() for p in attn.parameters()]))
    (out, weights, grads), (expected, expected_weights, expected_grads) = results

    def assert_close(actual, expected, rtol, atol):  # bf16 keeps 8 significant bits: 2**-8 of the largest value
        if bf16:
            rtol, atol = 0.0, 3e-2 * expected.abs().max().item()
        torch.testing.assert_close(actual.float(), expected, rtol=rtol, atol=atol)

    assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)
    if return_attention:
        assert_close(weights, expected_weights, rtol=1e-4, atol=1e-6)
    else:
        assert weights is None


@pytest.mark.parametrize("name", ["perceiver", "vit"])
def test_fused_and_explicit_attention_agree_and_weights_have_the_documented_shape(name):
    torch.manual_seed(0)
    model = build_model(TINY[name]).eval()
    x = _input(name)
    with torch.no_grad():
        fused = model(x)
        explicit, attentions = model(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    if name == "perceiver":
        assert len(attentions) == 3 and attentions[0].shape == (4, 1, 8, 256)
    else:
        assert len(attentions) == 2 and attentions[0].shape == (4, 2, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(attentions[0].shape[:-1]))


@pytest.mark.parametrize("name", ["perceiver", "perceiver-patches"])
def test_perceiver_under_cpu_bf16_autocast_gives_fp32_logits_close_to_fp32(name):
    """bf16 changes rounding, not the function; the logits stay fp32 so probabilities do not tie."""
    torch.manual_seed(0)
    model = build_model(TINY[name]).eval()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=3e-2 * expected.abs().max().item())


def _numpy_rollout(attentions, head_fusion, discard_ratio):
    """The same formula, written plainly, one image at a time."""
    out = []
    for b in range(attentions[0].shape[0]):
        tokens = attentions[0].shape[-1]
        result = np.eye(tokens)
        for layer in attentions:
            fused = getattr(np, {"mean": "mean", "max": "max", "min": "min"}[head_fusion])(layer[b], axis=0)
            flat = fused.flatten().copy()
            count = int(flat.size * discard_ratio)
            if count:
                candidates = np.argsort(np.where(np.arange(flat.size) == 0, np.inf, flat), kind="stable")[:count]
                flat[candidates] = 0
            fused = flat.reshape(tokens, tokens)
            mixed = (fused + np.eye(tokens)) / 2
            mixed = mixed / mixed.sum(axis=-1, keepdims=True)
            result = mixed @ result
        row = result[0, 1:]
        out.append(row / row.max())
    return np.stack(out)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.3])
def test_rollout_matches_a_plain_numpy_implementation(head_fusion, discard_ratio):
    rng = np.random.default_rng(0)
    attentions = []
    for _ in range(3):
        raw = rng.random((5, 2, 10, 10))
        attentions.append(raw / raw.sum(-1, keepdims=True))
    ours = attention_rollout([torch.tensor(a) for a in attentions], head_fusion, discard_ratio).numpy()
    np.testing.assert_allclose(ours, _numpy_rollout(attentions, head_fusion, discard_ratio), rtol=1e-5)
    assert ours.shape == (5, 9) and np.allclose(ours.max(1), 1)


def test_rollout_map_at_input_resolution():
    weights = torch.rand(3, 16)
    image = rollout_map(weights, 32)
    assert image.shape == (3, 1, 32, 32) and torch.allclose(image.amax(dim=(2, 3)), torch.ones(3, 1))


def test_hybrid_stage_two_sees_input_and_rollout_through_the_module_it_is_given():
    """stage_two calls the module it is given (under DDP, the CNN's wrapper) on [input, rollout], without a
    gradient to the rollout."""
    model = ViTRolloutCNN(**{k: v for k, v in TINY["vit-rollout-cnn"].items() if k != "name"}).eval()
    seen = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, stacked):
            seen.append(stacked)
            return self.inner(stacked)

    x = _input("vit")
    assert torch.allclose(model.stage_two(Wrapper(model.cnn), x), model(x))
    (stacked,) = seen
    assert stacked.shape == (4, 2, 16, 16) and not stacked[:, 1:].requires_grad
    assert torch.equal(stacked[:, :1], x) and torch.allclose(stacked[:, 1:], model.rollout(x))


@pytest.mark.parametrize("name", ["perceiver", "vit-rollout-cnn"])
def test_default_configs_build_for_images_and_grids(name):
    for shape in ((1, 64, 64), (1, 192, 192)):
        model = build_model(default_config(name, shape, 2))
        assert model.num_parameters > 1000


def test_a_conv_stem_makes_one_element_per_reduced_pixel_and_patch_size_counts_input_pixels():
    """explain and the occlusion window read patch_size as input pixels per element, stem or not."""
    perceiver = build_model(TINY["perceiver-stem"])
    assert perceiver._elements(perceiver._stem(torch.rand(2, 1, 16, 16))).shape == (2, 16, 8)  # 4x4 of 8 channels
    assert perceiver.patch_size == 4
    _, attentions = perceiver(torch.rand(2, 1, 16, 16), return_attention=True)
    assert attentions[0].shape[-1] == 16
    vit = build_model(TINY["vit-stem"])
    assert vit.patch_size == 4 and vit.grid == 4
    _, weights = vit(torch.rand(2, 1, 16, 16), return_attention=True)
    assert weights[0].shape[-1] == 17  # 16 tokens and the class token
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model({**TINY["perceiver-stem"], "stem_widths": [4, 8, 8, 8, 8]})
    with pytest.raises(ValueError, match="norm must be"):
        Perceiver(image_size=16, stem_widths=(4, 8), stem_norm="layer")


def test_a_stem_carries_a_one_pixel_dot_at_full_strength_where_linear_patches_dilute_it():
    """Why the stem (benchmarks/README.md): max pooling keeps a 1-pixel lesion as strong as it is, in its place."""
    from perceiver_med.models.cnn import ConvStem

    torch.manual_seed(0)
    stem = ConvStem(1, (4, 4, 4), norm="none").eval()
    for conv in (m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.constant_(conv.weight, 0.0)
        conv.weight.data[:, :, 1, 1] = 1.0 / conv.in_channels  # identity-like: each channel copies the mean
        torch.nn.init.constant_(conv.bias, 0.0)
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 37, 21] = 1.0
    features = stem(image)  # (1, 4, 8, 8)
    assert features.amax().item() == pytest.approx(1.0)
    assert torch.nonzero(features[0, 0] == features[0, 0].amax()).tolist() == [[37 // 8, 21 // 8]]


@pytest.mark.parametrize("name", ["perceiver-stem", "vit-stem"])
def test_deep_supervision_trains_the_stem_and_never_feeds_a_prediction(name):
    """In training the model also returns an auxiliary linear classifier's logits on the global max of its stem's
    feature map, and the loss adds them with their weight; in evaluation the logits do not depend on them."""
    from perceiver_med.training.engine import training_loss
    from perceiver_med.models.cnn import SupervisedOutput

    torch.manual_seed(0)
    model = build_model({**TINY[name], "deep_supervision": 0.5})
    x = _input(name)
    out = model(x)
    assert isinstance(out, SupervisedOutput) and out.weight == 0.5 and out.logits.shape == out.auxiliary.shape == (4, 3)
    stem = model.stem if name.startswith("perceiver") else model.patch_embed[0]
    with torch.no_grad():
        expected = model.supervision.head(stem(x).amax(dim=(2, 3)))
    torch.testing.assert_close(out.auxiliary, expected)
    y = torch.tensor([0, 1, 2, 0])
    _, loss, model_loss = training_loss(out, y)
    cross_entropy = torch.nn.functional.cross_entropy
    torch.testing.assert_close(model_loss, cross_entropy(out.logits, y))
    torch.testing.assert_close(loss, cross_entropy(out.logits, y) + 0.5 * cross_entropy(expected, y))
    (out.logits.pow(2).sum() + out.auxiliary.pow(2).sum()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)] == []
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.supervision.head.weight.normal_()
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        assert torch.is_tensor(before) and model(x, return_attention=True)[0].shape == (4, 3)


def test_the_engine_trains_the_deep_supervision_beside_the_model(tmp_path):
    """fit() adds the auxiliary classifier's weighted loss: without weight decay only its gradient can move it."""
    from perceiver_med.training.config import TrainConfig
    from perceiver_med.inputs.augment import AugmentConfig
    from perceiver_med.run.rundir import RunDir
    from perceiver_med.training.engine import Processes, Reporter, fit

    torch.manual_seed(0)
    model = build_model({**TINY["vit-stem"], "num_classes": 2, "deep_supervision": 1.0})
    start = model.supervision.head.weight.detach().clone()
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    data = {"train": (x, torch.tensor([0, 1] * 4))}
    config = TrainConfig(epochs=2, batch_size=4, precision="fp32", weight_decay=0.0)
    processes = Processes.start(torch.device("cpu"))
    try:
        fit(model, "vit", data, ["a", "b"], config, AugmentConfig(), RunDir(tmp_path).fit_files, torch.device("cpu"), processes,
            Reporter())
    finally:
        processes.close()
    assert not torch.equal(model.supervision.head.weight, start)


def test_deep_supervision_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="needs a convolutional stem"):
        build_model({**TINY["vit"], "deep_supervision": 1.0})
    with pytest.raises(ValueError, match="0 or more"):
        build_model({**TINY["perceiver-stem"], "deep_supervision": -1.0})
    with pytest.raises(ValueError, match="finite"):  # inf made the first loss infinite: "training diverged"
        build_model({**TINY["perceiver-stem"], "deep_supervision": float("inf")})


def test_hybrid_second_stage_starts_as_the_cnn_on_the_image_with_zero_rollout():
    """zero_rollout: at the start the CNN stage's output does not depend on the rollout channel, yet that channel
    gets a gradient, so the stage can take it up; without it the output does depend on the channel."""
    options = hybrid_options()
    x = _input("vit")
    for zero in (True, False):
        torch.manual_seed(0)
        model = ViTRolloutCNN(**options, zero_rollout=zero, residual=False).eval()
        dark = model.cnn(torch.cat([x, torch.zeros_like(x)], dim=1))
        lit = model.cnn(torch.cat([x, torch.rand_like(x)], dim=1))
        assert torch.allclose(dark, lit) == zero
        lit.pow(2).sum().backward()
        first = next(m for m in model.cnn.modules() if isinstance(m, torch.nn.Conv2d))
        assert torch.any(first.weight.grad[:, -1] != 0)


def test_residual_hybrid_starts_as_its_vit_and_its_cnn_stage_learns_a_correction():
    """residual: the hybrid's logits are the ViT's plus the CNN stage's, whose head starts at zero. So at the start
    the hybrid decides exactly as its (trained) ViT; a step of the CNN stage, as fit takes it through
    engine.stages_for, moves the hybrid away from the ViT, and the logits stay the sum computed by hand."""
    from perceiver_med.training.engine import stages_for

    options = hybrid_options()
    torch.manual_seed(0)
    model = ViTRolloutCNN(**options, residual=True).eval()
    x = _input("vit")
    vit_logits = model.vit(x)
    assert torch.allclose(model(x), vit_logits, atol=1e-6)
    stage = stages_for(model, "vit-rollout-cnn")[1]
    model.vit.requires_grad_(False)
    optimizer = torch.optim.SGD(stage.module.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(stage.forward(x), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    model.eval()
    by_hand = vit_logits + model.cnn(torch.cat([x, model.rollout(x)], dim=1))
    assert torch.allclose(model.vit(x), vit_logits)  # the ViT is frozen
    assert not torch.allclose(model(x), vit_logits, atol=1e-3)
    assert torch.allclose(model(x), by_hand, atol=1e-5)
    assert torch.allclose(stage.forward(x), model(x))  # the stage fit trains is the whole hybrid
    torch.manual_seed(0)
    alone = ViTRolloutCNN(**options, residual=False).eval()  # without: the CNN stage's logits are the hybrid's
    assert torch.allclose(alone(x), alone.cnn(torch.cat([x, alone.rollout(x)], dim=1)))


def test_the_frozen_vit_normalises_with_batch_statistics_while_the_cnn_stage_trains():
    """While the CNN stage trains, the ViT's batch norms use the batch's statistics (as in the ViT's own training)
    and leave its running statistics alone; in evaluation they use the running statistics."""
    from perceiver_med.models.layers import batch_norms

    options = hybrid_options()
    options["vit"] = {**options["vit"], "stem_widths": [4]}
    torch.manual_seed(0)
    model = ViTRolloutCNN(**options, residual=True).eval()
    (norm,) = batch_norms(model.vit)
    norm.running_mean.fill_(5.0)  # statistics far from any batch's
    x = _input("vit") * 3 + 1
    evaluated = model.vit(x)
    model.cnn.train()
    with torch.no_grad():
        training = model.stage_two(model.cnn, x)  # the CNN's head starts at zero: these are the ViT's logits
    reference = ViTRolloutCNN(**options, residual=True)
    reference.load_state_dict(model.state_dict())
    reference.vit.train()
    for module in reference.vit.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    assert torch.allclose(training, reference.vit(x), atol=1e-5)  # batch statistics, as a ViT in training
    assert not torch.allclose(training, evaluated, atol=1e-3)
    assert torch.all(norm.running_mean == 5.0) and not norm.training
    model.eval()
    assert torch.allclose(model(x), evaluated, atol=1e-5)
    torch.manual_seed(0)
    plain = ViTRolloutCNN(**options, residual=False).eval()  # without residual the ViT keeps its running statistics
    plain.cnn.train()
    assert torch.allclose(plain.stage_two(plain.cnn, x), plain.cnn(torch.cat([x, plain.rollout(x)], dim=1)))


def test_batch_statistics_restores_the_modes_even_after_an_error():
    from perceiver_med.models.layers import batch_statistics

    norm = torch.nn.BatchNorm2d(2).eval()
    x = torch.randn(4, 2, 3, 3) * 2 + 3
    with pytest.raises(RuntimeError):
        with batch_statistics(norm):
            inside = norm(x)
            raise RuntimeError("stop")
    assert not norm.training and norm.track_running_stats and torch.all(norm.running_mean == 0)
    assert torch.allclose(inside.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)  # normalised by the batch
    norm.train()
    with batch_statistics(norm, enabled=False):
        norm(x)
    assert torch.all(norm.running_mean > 0)  # disabled: a training batch norm updates its statistics as usual


def test_a_residual_hybrid_that_only_gets_worse_on_validation_ends_as_its_vit(tmp_path):
    """The CNN stage of a residual hybrid starts as the trained ViT, and that start is the first candidate for the
    best weights: with validation labels the opposite of the training labels every step of the CNN stage raises
    the validation loss, so the hybrid fit returns is its ViT (the CNN's head still zero)."""
    from perceiver_med.training.config import TrainConfig
    from perceiver_med.inputs.augment import AugmentConfig
    from perceiver_med.run.rundir import RunDir
    from perceiver_med.training.engine import Processes, Reporter, fit

    torch.manual_seed(0)
    model = build_model({**TINY["vit-rollout-cnn"], "residual": True})
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    x[4:, :, :8] += 1.0  # class 1 is brighter in the upper half
    y = torch.tensor([0] * 4 + [1] * 4)
    data = {"train": (x, y), "val": (x, 1 - y)}
    config = TrainConfig(epochs=3, batch_size=4, precision="fp32", patience=0)
    processes = Processes.start(torch.device("cpu"))
    try:
        fit(model, "vit-rollout-cnn", data, ["a", "b"], config, AugmentConfig(), RunDir(tmp_path).fit_files,
            torch.device("cpu"),
            processes, Reporter())
    finally:
        processes.close()
    model.eval()
    assert torch.all(model.cnn.head.weight == 0) and torch.allclose(model(x), model.vit(x))
