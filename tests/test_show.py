"""Label pictures: boxes are drawn where the rboxes are, the batch grid and label statistics are
written, and `obbslim show` writes them all for a tiny YOLO-OBB dataset."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from obbslim.cli import main
from obbslim.data.show import DIFFICULT_COLOR, class_color, draw_rboxes, plot_batch, plot_labels, show_dataset
from obbslim.ops import rbox2poly


def test_draw_rboxes_outlines_the_box():
    img = np.zeros((120, 160, 3), np.uint8)
    rb = np.array([[80, 60, 80, 30, 0.5]])
    out = draw_rboxes(img, rb, [3], ["a", "b", "c", "d"], labels=False)
    assert out is not img and (img == 0).all()  # a copy
    col = np.array(class_color(3))
    drawn = np.abs(out.astype(int) - col).sum(2) < 60
    corners = rbox2poly(rb)[0].reshape(4, 2)
    # pixels on the outline (edge midpoints) have the class colour; the centre and far corners do not
    for a, b in zip(corners, np.roll(corners, -1, 0)):
        x, y = ((a + b) / 2).astype(int)
        assert drawn[y - 1 : y + 2, x - 1 : x + 2].any()
    assert not drawn[55:66, 75:86].any()
    assert not drawn[:10, :10].any() and not drawn[-10:, -10:].any()


def test_draw_rboxes_labels_scores_colors_and_empty():
    img = np.full((100, 100, 3), 30, np.uint8)
    rb = np.array([[50, 50, 40, 20, 0.0], [30, 70, 20, 10, 1.0]])
    out = draw_rboxes(
        img, rb, [0, 1], ["plane", "ship"], scores=[0.9, 0.5], colors=[DIFFICULT_COLOR, (0, 0, 255)]
    )
    white = (out == 255).all(2)
    assert white[30:41, 30:71].any()  # white box edge around y = 40
    assert ((out[:, :, 2] > 200) & (out[:, :, 0] < 50)).any()  # the red one
    assert np.array_equal(draw_rboxes(img, np.zeros((0, 5)), []), img)


def test_plot_batch_grid(tmp_path):
    imgs = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    targets = torch.tensor([[1, 0, 32, 32, 40, 20, 0.3], [3, 1, 20, 20, 12, 8, -0.5]])
    p = plot_batch(imgs, targets, ["a", "b"], tmp_path / "sub" / "batch.jpg")
    grid = cv2.imread(str(p))
    assert grid.shape == (128, 128, 3)
    inner = grid.astype(int).sum(2)
    cell = lambda k: inner[(k // 2) * 64 + 3 : (k // 2) * 64 + 61, (k % 2) * 64 + 3 : (k % 2) * 64 + 61]  # noqa: E731
    assert cell(0).max() < 60 and cell(2).max() < 60  # no targets: stays black (jpeg noise aside)
    assert cell(1).max() > 200 and cell(3).max() > 200  # boxes drawn
    # float 0-1 images and an 8th score column are accepted
    p2 = plot_batch(
        imgs.float() / 255, torch.cat([targets, torch.ones(2, 1)], 1), ["a", "b"], tmp_path / "b2.jpg"
    )
    assert cv2.imread(str(p2)).shape == (128, 128, 3)


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    rb = np.c_[
        rng.uniform(0, 100, (50, 2)),
        rng.uniform(10, 50, 50),
        rng.uniform(2, 10, 50),
        rng.uniform(-1.5, 1.5, 50),
    ]
    p = plot_labels(rb, rng.integers(0, 3, 50), ["plane", "ship", "small vehicle"], tmp_path / "labels.png")
    im = cv2.imread(str(p))
    assert im is not None and im.shape[0] > 200 and im.std() > 5
    assert plot_labels(np.zeros((0, 5)), np.zeros(0), ["a"], tmp_path / "empty.png").stat().st_size > 0


@pytest.fixture()
def tiny_dataset(tmp_path):
    """A 3-image YOLO-OBB dataset (one image has no label file) with a data YAML."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for j, (h, w) in enumerate([(96, 128), (128, 96), (80, 80)]):
            cv2.imwrite(
                str(tmp_path / "images" / split / f"im{j}.png"), rng.integers(0, 255, (h, w, 3), np.uint8)
            )
            if j < 2:
                poly = rbox2poly(np.array([[w / 2, h / 2, 40, 16, 0.4 * j]]))[0]
                norm = poly / np.tile([w, h], 4)
                (tmp_path / "labels" / split / f"im{j}.txt").write_text(
                    f"{j} " + " ".join(f"{v:.5f}" for v in norm) + "\n"
                    f"1 {0.1} {0.1} {0.3} {0.1} {0.3} {0.2} {0.1} {0.2}\n"
                )
    y = tmp_path / "data.yaml"
    y.write_text(
        f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: plane\n  1: small vehicle\n"
    )
    return y


@pytest.mark.parametrize("augment", [False, True])
def test_show_dataset_writes_files(tiny_dataset, tmp_path, augment):
    out = tmp_path / "show"
    files = show_dataset(tiny_dataset, "train", out, n=2, augment=augment, imgsz=128)
    names = sorted(p.name for p in files)
    assert names == ["im0.jpg", "im1.jpg", "labels.png", "train_batch0.jpg"]
    for p in files:
        im = cv2.imread(str(p))
        assert p.stat().st_size > 0 and im is not None and im.size > 0
    grid = cv2.imread(str(out / "train_batch0.jpg"))
    assert grid.shape[:2] == (256, 256)  # 3 items -> 2x2 cells of 128 px


def test_cli_show(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            [
                "show",
                str(tiny_dataset),
                "--split",
                "val",
                "--out",
                str(out),
                "--n",
                "1",
                "--augment",
                "--imgsz",
                "64",
            ]
        )
        == 0
    )
    assert (
        (out / "val_batch0.jpg").is_file() and (out / "labels.png").is_file() and (out / "im0.jpg").is_file()
    )
    assert "labels.png" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert "missing.yaml" in capsys.readouterr().err
