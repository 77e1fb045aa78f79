"""Explanations are registered with the picture and show evidence: oracles by construction, then trained models."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from perceiver_med.results.explain import (EVIDENCE_FLOOR, EVIDENCE_TOP, Evidence, ExplainRequest, evidence_figure,
                                           evidence_for, evidence_map, explain_run)
from perceiver_med.models import Perceiver, ViTRolloutCNN
from perceiver_med.workflows.train import TrainRequest, train
from tests.conftest import CPU

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads cost 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _peak(heat: torch.Tensor) -> tuple[int, int]:
    return divmod(int(heat.flatten().argmax()), heat.shape[-1])


# ---------------------------------------------------------------- geometry, with attention forced by weights
def test_rollout_map_of_the_hybrid_peaks_on_the_patch_the_attention_was_forced_to():
    dim = 16
    model = ViTRolloutCNN(vit={"image_size": SIZE, "patch_size": 8, "dim": dim, "depth": 2, "heads": 1},
                          cnn={"widths": [4]}).eval()
    vit = model.vit
    with torch.no_grad():
        vit.pos_embed.zero_()
        vit.patch_embed.weight.zero_()
        vit.patch_embed.bias.zero_()
        vit.patch_embed.weight[0].fill_(1.0)  # token feature 0: the patch's brightness
        vit.cls_token.zero_()
        vit.cls_token[0, 0, 1] = 1.0
        for block in vit.blocks:
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
            block.attn.qkv.weight[0, 1] = 10.0  # only CLS asks ...
            block.attn.qkv.weight[dim, 0] = 10.0  # ... and a bright patch answers
    for top, left in [(0, 24), (16, 8), (24, 0)]:
        x = torch.zeros(1, 1, SIZE, SIZE)
        x[0, 0, top:top + 8, left:left + 8] = 1.0
        with torch.no_grad():
            row, col = _peak(model.rollout(x)[0, 0])
        assert (row // 8, col // 8) == (top // 8, left // 8)


class ReadsOneSpot(nn.Module):
    """A classifier by construction: class 1 ('dot') when the 4x4 square at `place` is bright; its logit margin
    is `gain` x (brightness - 0.5)."""

    def __init__(self, place=(8, 24), gain=20.0):
        super().__init__()
        self.place, self.gain = place, gain

    def forward(self, x):
        r, c = self.place
        brightness = x[:, :, r:r + 4, c:c + 4].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(brightness), self.gain * (brightness - 0.5)], dim=1)


@pytest.mark.parametrize("dot", [True, False])
def test_evidence_lies_on_the_only_pixels_the_model_reads_whatever_it_predicts(dot):
    x = torch.full((1, 1, SIZE, SIZE), 0.2)
    x[0, 0, 20:28, 2:10] = 1.0  # a bright distractor the model ignores
    if dot:
        x[0, 0, 8:12, 24:28] = 0.9
    heat = evidence_map(ReadsOneSpot(), x, window=4)[0, 0]
    assert heat.shape == (SIZE, SIZE)
    assert heat[8:12, 24:28].min() > 1.0  # painting the spot (dark when lit, bright when dark) flips it
    heat[8:12, 24:28] = 0
    assert heat.abs().max() == 0  # nothing else changes the prediction at all


def test_overlay_is_drawn_pixel_on_pixel_over_the_picture():
    from perceiver_med.results.display import overlay_figure

    picture = np.full((SIZE, SIZE), 0.5)
    heat = np.zeros((SIZE, SIZE))
    heat[4:8, 20:28] = 3.0  # top right
    figure = overlay_figure(picture, heat, "title", "fall, nats", (EVIDENCE_FLOOR, EVIDENCE_TOP))
    pixels, rows, cols, inside = _rendered(figure)
    tinted = (pixels.max(-1) - pixels.min(-1) > 40) & inside
    assert tinted.any()
    r, c = np.nonzero(tinted)
    # within half a picture pixel of the hot block (display pixels straddle its edges); flipped it would be far
    assert 3.5 <= rows[r].min() and rows[r].max() < 8.5 and 19.5 <= cols[c].min() and cols[c].max() < 28.5
    assert len(figure.axes) == 2  # the image and its colour bar


def _rendered(figure):
    """The figure's RGB pixels, each pixel's (row, col) in picture pixels, and which lie on the picture."""
    import matplotlib.pyplot as plt

    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    box = figure.axes[0].images[0].get_window_extent()
    top = pixels.shape[0] - box.y1  # display y grows upwards, array rows downwards
    rows = (np.arange(pixels.shape[0]) - top) / box.height * SIZE
    cols = (np.arange(pixels.shape[1]) - box.x0) / box.width * SIZE
    inside = (rows[:, None] >= 0) & (rows[:, None] < SIZE) & (cols[None] >= 0) & (cols[None] < SIZE)
    plt.close(figure)
    return pixels, rows, cols, inside


def _colour_at(rendered, row: float, col: float) -> np.ndarray:
    pixels, rows, cols, _ = rendered
    return pixels[np.abs(rows - row).argmin(), np.abs(cols - col).argmin()]


def _evidence(heat: np.ndarray, predicted: str = "dot") -> Evidence:
    from perceiver_med.run.predictor import Decisions

    probs = np.array([[0.1, 0.9]]) if predicted == "dot" else np.array([[0.9, 0.1]])
    return Evidence(Decisions(probs, probs, np.array([1 if predicted == "dot" else 0]), ["none", "dot"]), 4, heat)


def test_every_overlay_colours_the_same_nats_alike_on_the_documented_scale():
    """Oracle: the colour map at log(value / floor) / log(top / floor), alpha-blended over the grey picture; a map
    whose largest effect is 1 nat and one with 9 nats beside it paint that 1 nat alike; 3.5e-7 nats paint nothing."""
    from matplotlib.colors import LogNorm

    from perceiver_med.results.display import overlay_cmap

    picture = np.full((SIZE, SIZE), 0.5)
    alone, beside, faint = np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE))
    alone[4:8, 4:8] = beside[4:8, 4:8] = 1.0
    beside[20:24, 20:24] = 9.0
    faint[4:8, 4:8] = 3.5e-7
    drawn = [_rendered(evidence_figure(picture, _evidence(heat), "t")) for heat in (alone, beside, faint)]
    grey = _colour_at(drawn[0], 1.5, 1.5)
    assert abs(grey - 0.5 * 255).max() <= 1  # untouched picture

    def expected(nats):
        red, green, blue, alpha = overlay_cmap()(LogNorm(EVIDENCE_FLOOR, EVIDENCE_TOP, clip=True)(nats))
        return alpha * np.array([red, green, blue]) * 255 + (1 - alpha) * grey

    one_nat = [_colour_at(rendered, 6, 6) for rendered in drawn[:2]]
    assert abs(one_nat[0] - one_nat[1]).max() <= 1  # one scale, whatever else the map holds
    assert abs(one_nat[0] - expected(1.0)).max() <= 3
    assert abs(_colour_at(drawn[1], 22, 22) - expected(EVIDENCE_TOP)).max() <= 3  # 9 nats: the top colour
    assert abs(expected(EVIDENCE_TOP) - expected(1.0)).max() > 40  # and 9 nats look unlike 1
    pixels, _, _, inside = drawn[2]
    assert not ((pixels.max(-1) - pixels.min(-1) > 10) & inside).any()  # 3.5e-7 nats: no coloured pixel


def _predictor(model: nn.Module, temperature: float):
    """A run's predictor over a model built in the test: the fixture knee run's settings, classes none/dot."""
    from dataclasses import replace
    from pathlib import Path

    from perceiver_med.run.predictor import Predictor
    from perceiver_med.run.rundir import load_run_config
    from perceiver_med.training.config import Decision

    fixture = Path(__file__).resolve().parent / "fixtures" / "legacy_runs" / "runs" / "knee-perceiver"
    config = replace(load_run_config(fixture), classes=["none", "dot"], positive_class="dot",
                     decision=Decision(temperature=temperature, threshold=0.5))
    return Predictor.of_model(config, model.eval(), torch.device("cpu"))


def _spot_input() -> np.ndarray:
    x = np.full((1, SIZE, SIZE), 0.2, np.float32)
    x[0, 8:12, 24:28] = 0.9  # the spot ReadsOneSpot reads: margin 20 x 0.4 = 8 for "dot"
    return x


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.25])
def test_evidence_is_the_fall_of_the_probability_the_run_reports(temperature):
    """Oracle by hand: both paints are the background (0.2: 16 bright pixels of 1024 lie beyond both quantiles),
    so painting the 8x8 window over the spot turns the margin from 8 to 20 x (0.2 - 0.5) = -6, and the run's
    calibrated log p(dot) = log sigmoid(margin / T) falls by log sigmoid(8 / T) - log sigmoid(-6 / T)."""
    def log_sigmoid(margin):
        return -np.log1p(np.exp(-margin))

    evidence = evidence_for(_predictor(ReadsOneSpot(), temperature), _spot_input())
    assert evidence.predicted == "dot" and evidence.window == 8
    assert evidence.probability == pytest.approx(np.exp(log_sigmoid(8 / temperature)), rel=1e-6)
    expected = np.zeros((SIZE, SIZE))
    expected[8:16, 24:32] = log_sigmoid(8 / temperature) - log_sigmoid(-6 / temperature)
    np.testing.assert_allclose(evidence.map, expected, rtol=1e-5, atol=1e-12)


def test_a_decision_no_patch_moves_is_drawn_uncoloured_and_says_so(tmp_path):
    """A model that barely reads its input (as an untrained run): the spot moves log p by 3.5e-4 nats, below the
    floor, so the overlay is the bare picture with a sentence under it."""
    evidence = evidence_for(_predictor(ReadsOneSpot(gain=1e-3), 1.0), _spot_input())
    assert 0 < evidence.largest < EVIDENCE_FLOOR and not evidence.matters
    figure = evidence_figure(_spot_input()[0], evidence, "untrained")
    assert any("no patch matters" in text.get_text() for text in figure.axes[0].texts)
    pixels, _, _, inside = _rendered(figure)
    assert not ((pixels.max(-1) - pixels.min(-1) > 10) & inside).any()


# ---------------------------------------------------------------- trained on a task whose evidence is one spot
DOT = (9.5, 21.5)  # the dot's centre (row, col): off-centre, filling the 4x4 patch (2, 5)


def _spot_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and two bright distractor discs anywhere (both classes); class 1 also has a small dot at DOT."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    images, labels = [], np.arange(count) % 2
    for label in labels:
        image = 0.1 + rng.normal(0, 0.03, (SIZE, SIZE))
        for _ in range(2):
            while True:
                cy, cx = rng.uniform(4, SIZE - 4, 2)
                if np.hypot(cy - DOT[0], cx - DOT[1]) > 9:
                    break
            image[np.hypot(y - cy, x - cx) <= rng.uniform(2.5, 4)] += 0.7
        if label:
            image[np.hypot(y - DOT[0], x - DOT[1]) <= 2] += 0.4
        images.append(np.clip(image, 0, 1))
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32), torch.from_numpy(labels)


def _fit(model: nn.Module, x, y, steps: int = 120) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _trained_perceiver(x, y):
    model = Perceiver(image_size=SIZE, patch_size=4, num_latents=8, latent_dim=32, cross_dim_head=32,
                      latent_heads=2, latent_dim_head=16, self_per_cross_attn=1, num_iterations=2, max_freq=8.0)
    _fit(model, x, y)
    return model


def _trained_hybrid(x, y):
    model = ViTRolloutCNN(vit={"image_size": SIZE, "patch_size": 4, "dim": 32, "depth": 1, "heads": 2},
                          cnn={"widths": [8, 16]})
    _fit(model.vit, x, y)
    _fit(model.cnn, torch.cat([x, model.rollout(x)], dim=1), y)  # the CNN on [input, rollout of the ViT]
    return model


@pytest.mark.parametrize("build", [_trained_perceiver, _trained_hybrid], ids=["perceiver", "hybrid"])
def test_evidence_of_a_trained_model_is_hottest_on_the_dot(build):
    torch.manual_seed(0)
    model = build(*_spot_images(256, seed=0))
    x, labels = _spot_images(32, seed=100)
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).float().mean() >= 0.9  # it learned the task
    heat = evidence_map(model, x)[:, 0]
    hottest_on_dot = heat[:, int(DOT[0]), int(DOT[1])] >= heat.flatten(1).amax(1)
    assert hottest_on_dot[labels == 1].float().mean() >= 0.8, hottest_on_dot


def test_figures_draw_names_as_plain_text(tmp_path):
    """Class and file names come from users: '$\\foo$' is not mathtext, and must not stop a run's figures."""
    from perceiver_med.results.display import save_confusion, save_curves, save_figure

    classes = ["$\\foo$", "a [/] $b"]
    save_confusion([[3, 1], [0, 4]], classes, "test", tmp_path / "confusion.png")
    save_curves([{"stage": "$\\foo$", "epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "train_accuracy": 0.7,
                  "val_accuracy": 0.8}], tmp_path / "curves.png")
    evidence = Evidence(_evidence(np.ones((8, 8))).decided, 4, np.ones((8, 8)))
    evidence.decided.classes = classes
    save_figure(evidence_figure(np.zeros((8, 8)), evidence, "$\\foo$.png"), tmp_path / "overlay.png",
                {"Title": "$\\foo$.png"})
    assert Image.open(tmp_path / "overlay.png").text["Title"] == "$\\foo$.png"
    assert all(Image.open(tmp_path / name).size[0] > 100 for name in ("confusion.png", "curves.png"))


def test_curves_of_a_short_run_have_whole_epoch_ticks_and_a_legend_over_no_curve():
    from perceiver_med.results.display import curves_figure

    history = [{"stage": "perceiver", "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
                "train_accuracy": 0.5 + e / 10, "val_accuracy": 0.4 + e / 10} for e in (1, 2, 3, 4)]
    figure = curves_figure(history)
    figure.canvas.draw()
    for axis in figure.axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert axis.get_legend() is None  # no legend inside a plot, where it would cover points
    legend = figure.legends[0].get_window_extent()
    assert all(not legend.overlaps(axis.get_window_extent()) for axis in figure.axes)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["train (running, augmented)", "val"]


# ---------------------------------------------------------------- the overlays explain_run writes
@pytest.fixture(scope="module")
def spot_run(tmp_path_factory):
    """A Perceiver run on class folders dot/ and none/ of 32x32 PNGs (one epoch: only the files matter)."""
    from perceiver_med.workflows.folders import split_folder

    root = tmp_path_factory.mktemp("spot")
    x, labels = _spot_images(30, seed=2)
    for k, (image, label) in enumerate(zip(x[:, 0].numpy(), labels.tolist())):
        folder = root / "data" / ("none", "dot")[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"case{k:03d}.png")
    split_folder(root / "data", root / "splits.csv", seed=0)
    train(TrainRequest(root / "splits.csv", root / "run", "perceiver",
                       dict(size=SIZE, epochs=1, batch_size=16, num_latents=8, latent_dim=32), CPU))
    return root


def test_overlays_name_the_file_the_truth_and_the_prediction(spot_run, tmp_path):
    scans = [spot_run / "data" / "dot" / "case001.png", spot_run / "data" / "none" / "case000.png"]
    odd = tmp_path / "odd [/]" / "dot" / "$\\foo$ [bold].png"  # mathtext and rich markup in the path
    odd.parent.mkdir(parents=True)
    odd.write_bytes(scans[0].read_bytes())
    written, skipped = explain_run(ExplainRequest(spot_run / "run", [*scans, odd], tmp_path / "out",
                                                  labels={scans[1]: "dot"}))
    assert not skipped and len(written) == 3
    titles = [Image.open(path).text["Title"] for path in written]
    assert "case001.png" in titles[0] and "true dot" in titles[0]  # the class folder
    assert "case000.png" in titles[1] and "true dot" in titles[1]  # the mapping given wins over the folder
    assert "$\\foo$ [bold].png" in titles[2] and "true dot" in titles[2]
    for title in titles:
        assert "predicted " in title and "(p = " in title and "evidence" in title


def test_a_folder_of_several_scans_is_explained_scan_by_scan(spot_run, tmp_path, run_installed):
    """As predict takes a folder; it was refused with 'name one with a series_uid column' (PNGs have no series)."""
    folder = spot_run / "data" / "dot"
    count = len(list(folder.glob("*.png")))
    code, out, err = run_installed("explain", spot_run / "run", folder, "--out", tmp_path / "overlays")
    assert code == 0, err
    assert len(list((tmp_path / "overlays").glob("*_explain.png"))) == count
