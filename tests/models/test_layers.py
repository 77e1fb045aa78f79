import pytest
import torch

from perceiver_med.models.layers import attend, fused_attention_is_faster


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("return_weights", [False, True])
def test_attention_equals_the_textbook_formula_in_fp32_and_under_cpu_bf16_autocast(bf16, return_weights):
    """Fused or explicit, fp32 or bf16: the numbers and gradients of softmax(q k^T * scale) v."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for n in (5, 7, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert fused_attention_is_faster(q) is not bf16  # torch's fused kernel is the slow one in CPU bf16
        out, weights = attend(q, k, v, 0.0, True, return_weights, scale=0.3)
    expected_weights = torch.softmax(q @ k.transpose(-1, -2) * 0.3, dim=-1)
    expected = expected_weights @ v

    def assert_close(actual, expected):  # bf16 keeps 8 significant bits: 2**-8 of the largest value, a few times
        atol = 2e-2 * expected.abs().max().item() if bf16 else 1e-5
        torch.testing.assert_close(actual.float(), expected, rtol=0 if bf16 else 1e-5, atol=atol)

    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad)
    if return_weights:
        assert_close(weights, expected_weights)
    else:
        assert weights is None


def test_explicit_attention_in_batch_slices_equals_one_piece(monkeypatch):
    """CPU bf16 attention forms its scores a slice of the batch at a time; the slicing changes no number."""
    from perceiver_med.models import layers

    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 2, n, 8, requires_grad=True) for n in (3, 4, 4))
    results = []
    for scores_per_slice in (layers.SCORES_PER_SLICE, 2 * 2 * 3 * 4):  # one piece; slices of 2, 2 and 1
        monkeypatch.setattr(layers, "SCORES_PER_SLICE", scores_per_slice)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, weights = attend(q, k, v, 0.0, True, False)
        assert weights is None
        results.append((out, *torch.autograd.grad(out.float().square().sum(), (q, k, v))))
    for sliced, whole in zip(*results):
        torch.testing.assert_close(sliced, whole, rtol=0, atol=0)
