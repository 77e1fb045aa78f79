import torch
from torch import nn

from perceiver_med.models.layers import Linear, _FallbackBF16Linear


def test_fallback_linear_backward_is_the_gradient_of_a_linear_map():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_FallbackBF16Linear.apply, (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a, w: _FallbackBF16Linear.apply(a, w, None), (x, weight))


def test_linear_matches_nn_linear_in_fp32_and_under_bf16_autocast():
    torch.manual_seed(0)
    ours, reference = Linear(64, 48), nn.Linear(64, 48)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(4, 16, 64)
    for bf16 in (False, True):
        results = []
        for layer in (ours, reference):
            layer.zero_grad()
            inputs = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = layer(inputs)
            out.float().square().sum().backward()
            results.append((out, inputs.grad, layer.weight.grad, layer.bias.grad))
        tolerance = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-6, atol=1e-6)
        assert results[0][0].dtype == results[1][0].dtype == (torch.bfloat16 if bf16 else torch.float32)
        for mine, theirs in zip(*results):
            torch.testing.assert_close(mine.float(), theirs.float(), **tolerance)
