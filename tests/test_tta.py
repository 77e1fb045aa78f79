"""Test-time augmentation: label-preserving views (no mirror for sides), the mean over them, batch-independent."""
import csv

import numpy as np
import pytest
import torch

from perceiver_med.inputs.augment import AugmentConfig
from perceiver_med.run.tta import AugmentedViews, mirror


def test_a_mirror_flips_each_tile_about_its_own_centre():
    image = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)
    expected = np.block([[np.fliplr(image[r * 2:(r + 1) * 2, q * 3:(q + 1) * 3]) for q in range(3)]
                         for r in range(3)])
    # a 3x3 mosaic of 2x3 tiles
    got = mirror(torch.from_numpy(image)[None, None], tiles=3)[0, 0].numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(mirror(torch.from_numpy(image)[None, None])[0, 0].numpy(), np.fliplr(image))


class _Left(torch.nn.Module):
    """Says "left" in proportion to how much brighter the image's left half is: a mirror would reverse it."""

    def forward(self, x):
        half = x.shape[-1] // 2
        contrast = (x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))) * 8
        return torch.stack([contrast, -contrast], dim=1)


def _sided(count: int = 3) -> torch.Tensor:
    x = torch.full((count, 1, 32, 32), 0.2)
    x[..., :12] = torch.linspace(0.6, 0.9, count).view(-1, 1, 1, 1)
    return x


def test_sides_are_never_mirrored_and_other_labels_are():
    x = _sided()
    sides = AugmentedViews(_Left(), AugmentConfig(flip=False), views=8)
    for k in range(8):
        view = sides.view(x, k)
        assert (view[..., :12].mean(dim=(1, 2, 3)) > view[..., 20:].mean(dim=(1, 2, 3))).all(), k
    assert not torch.equal(sides.view(x, 3), x)  # the warps do change the input
    shapes = AugmentedViews(_Left(), AugmentConfig(flip=True), views=8)
    torch.testing.assert_close(shapes.view(x, 1), torch.flip(x, dims=[-1]))


def test_the_output_is_the_mean_over_the_views_whatever_the_batch():
    x = _sided(4)
    model = _Left()
    wrapped = AugmentedViews(model, AugmentConfig(flip=True), views=5, seed=3)
    expected = torch.stack([torch.softmax(model(wrapped.view(x, k)), dim=1) for k in range(5)]).mean(dim=0)
    torch.testing.assert_close(wrapped(x).exp(), expected)
    alone = torch.cat([wrapped(x[b:b + 1]) for b in range(4)])
    torch.testing.assert_close(alone, wrapped(x))
    torch.testing.assert_close(wrapped(x), wrapped(x))  # the same views on every call
    # a mirror reverses the toy model's answer, so with it the mean moves toward 0.5
    assert (expected[:, 0] < torch.softmax(model(x), dim=1)[:, 0]).all()


def test_predict_with_views_on_a_trained_run(run_installed, tiny_run, knee, tmp_path):
    outputs = {}
    for name, extra in (("plain", ()), ("one", ("--tta", "1")), ("four", ("--tta", "4")), ("again", ("--tta", "4"))):
        code, out, err = run_installed("predict", tiny_run.run, knee / "data", "--out", tmp_path / f"{name}.csv",
                                       *extra)
        assert code == 0, err
        outputs[name] = [float(r["prob_right"]) for r in csv.DictReader(open(tmp_path / f"{name}.csv"))]
    assert outputs["one"] == outputs["plain"] and outputs["four"] == outputs["again"]
    assert outputs["four"] != pytest.approx(outputs["plain"], abs=1e-6)
    assert "mean of 4 test-time views" in out
    code, out, err = run_installed("predict", tiny_run.run, knee / "data", "--out", tmp_path / "x.csv", "--tta", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--tta" in err
