"""``lipcert dataset``: image folders and .npy pairs become the .npz the pipeline reads; bad inputs get codes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx_builders import relu_model
from PIL import Image

from certify.cli import main
from certify.datasets import load_dataset


def _folder(root, sizes=((12, 9), (5, 7), (20, 20))):
    """Two classes ("cat", "dog"), images of several sizes and modes."""
    rng = np.random.default_rng(0)
    for cls, mode in (("cat", "RGB"), ("dog", "L")):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    return root


def _run(*args):
    return CliRunner().invoke(main, ["dataset", *map(str, args)])


def test_image_folder_to_the_model_input_shape(tmp_path):
    folder = _folder(tmp_path / "images")
    model = tmp_path / "m.onnx"
    model.write_bytes(relu_model(shape=("N", 3, 8, 6)).SerializeToString())
    out = tmp_path / "d.npz"
    r = _run(out, "--images", folder, "--model", model)
    assert r.exit_code == 0, r.output
    assert "0=cat, 1=dog" in r.output
    x, y, record = load_dataset(str(out), (3, 8, 6), 100)
    assert x.shape == (6, 3, 8, 6) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and record["samples"] == 6
    assert np.allclose(x[3, 0], x[3, 1]) and np.allclose(x[3, 1], x[3, 2])  # greyscale spread over RGB


def test_channels_last_and_grey_shapes(tmp_path):
    folder = _folder(tmp_path / "images")
    for shape, expected in (("4,5,1", (6, 4, 5, 1)), ("7,7", (6, 7, 7))):
        out = tmp_path / f"{shape}.npz"
        assert _run(out, "--images", folder, "--shape", shape).exit_code == 0
        assert np.load(out)["x"].shape == expected


def test_npy_pair(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(24, dtype=np.float64).reshape(4, 6) / 24)
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 0]))
    out = tmp_path / "d.npz"
    r = _run(out, "--x", tmp_path / "x.npy", "--y", tmp_path / "y.npy", "--shape", "2,3")
    assert r.exit_code == 0, r.output
    data = np.load(out)
    assert data["x"].shape == (4, 2, 3) and data["x"].dtype == np.float32 and data["y"].dtype == np.int64


@pytest.mark.parametrize(("setup", "code"), [
    ("no_classes", "empty_dataset"),
    ("empty_class", "empty_dataset"),
    ("broken_image", "unreadable_image"),
    ("mismatched", "mismatched_counts"),
    ("no_shape", "bad_argument"),
    ("pickled", "bad_dataset"),
])
def test_refusals_have_codes(tmp_path, setup, code):
    images = tmp_path / "images"
    images.mkdir()
    args = ["--images", images, "--shape", "3,4,4"]
    if setup == "empty_class":
        (images / "a").mkdir()
    elif setup == "broken_image":
        _folder(images / "sub")
        args = ["--images", images / "sub", "--shape", "3,4,4"]
        (images / "sub" / "cat" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif setup == "no_shape":
        _folder(images / "sub")
        args = ["--images", images / "sub"]
    elif setup in ("mismatched", "pickled"):
        np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
        y = np.zeros(4, np.int64) if setup == "mismatched" else np.array([{"a": 1}], dtype=object)
        np.save(tmp_path / "y.npy", y, allow_pickle=True)
        args = ["--x", tmp_path / "x.npy", "--y", tmp_path / "y.npy"]
    r = _run(tmp_path / "out.npz", *args)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {code}: "), r.output
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize(("x", "y", "words"), [
    (np.array([[0.5, np.nan]]), np.array([0]), "NaN"),
    (np.zeros((2, 2)), np.array([0, -1]), "negative labels"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer class labels"),
])
def test_npy_pairs_get_the_checks_every_dataset_gets(tmp_path, x, y, words):
    """The builder refuses what lipcert certify and the service would refuse later, with the same code."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    r = _run(tmp_path / "out.npz", "--x", tmp_path / "x.npy", "--y", tmp_path / "y.npy")
    assert r.exit_code == 2 and r.stderr.startswith("error: bad_dataset: ") and words in r.stderr, r.output
    assert not (tmp_path / "out.npz").exists()
