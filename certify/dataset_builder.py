"""Build the ``.npz`` lipcert reads (``x`` float32, batch first; ``y`` int64 labels) from what users have.

Two sources: an image folder with one sub-folder per class (labels are the sorted sub-folder names' positions), each
image resized to the model's input and scaled to [0, 1]; or a pair of ``.npy`` arrays. Every refusal is a
``ModelRejected`` with a stable code: ``empty_dataset``, ``unreadable_image``, ``mismatched_counts``,
``bad_dataset``, ``bad_argument``.
"""

from __future__ import annotations

import io
import os

import numpy as np

from certify.datasets import check_arrays
from certify.errors import ModelRejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_layout(shape: tuple[int, ...]) -> tuple[str, int, int, int]:
    """("chw" | "hwc" | "hw", channels, height, width) for a per-sample input shape that holds an image."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return "chw", shape[0], shape[1], shape[2]
    if len(shape) == 3 and shape[2] in (1, 3):
        return "hwc", shape[2], shape[0], shape[1]
    if len(shape) == 2:
        return "hw", 1, shape[0], shape[1]
    raise ModelRejected("bad_argument", f"input shape {list(shape)} is not an image (C,H,W with C 1 or 3, H,W,C "
                        "or H,W); pass --shape")


def _classes(folder: str) -> list[tuple[str, list[str]]]:
    if not os.path.isdir(folder):
        raise ModelRejected("empty_dataset", f"{folder} is not a folder")
    classes = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isdir(path) or name.startswith("."):
            continue
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
        if not files:
            raise ModelRejected("empty_dataset", f"class folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        classes.append((name, files))
    if not classes:
        raise ModelRejected("empty_dataset", f"{folder} has no class sub-folders (one folder of images per class)")
    return classes


def _image(path: str, channels: int, height: int, width: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise ModelRejected("unreadable_image", f"cannot read image {path}: {e}") from None
    return pixels.reshape(height, width, channels)


def from_image_folder(folder: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x, y, class names): every image resized to ``shape`` (per sample) with values in [0, 1]."""
    layout, channels, height, width = image_layout(tuple(shape))
    xs, ys, names = [], [], []
    for label, (name, files) in enumerate(_classes(folder)):
        names.append(name)
        for path in files:
            pixels = _image(path, channels, height, width)
            xs.append(pixels.transpose(2, 0, 1) if layout == "chw" else pixels[..., 0] if layout == "hw" else pixels)
            ys.append(label)
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64), names


def _npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelRejected("bad_dataset", f"cannot read {what} from {path}: {e}") from None


def from_arrays(x_path: str, y_path: str, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from two ``.npy`` files; x may be any real dtype (cast to float32), y integer labels.

    What two separate files can get wrong is refused here (``mismatched_counts``, ``empty_dataset``); the arrays
    themselves are checked by :func:`certify.datasets.check_arrays`, as every dataset lipcert reads is.
    """
    x, y = _npy(x_path, "x"), _npy(y_path, "y")
    if x.dtype.kind not in "fiu":
        raise ModelRejected("bad_dataset", f"x must be numeric, not {x.dtype}")
    if x.ndim >= 1 and y.ndim == 1 and len(x) != len(y):
        raise ModelRejected("mismatched_counts", f"x has {len(x)} samples, y has {len(y)} labels")
    if y.size == 0:
        raise ModelRejected("empty_dataset", "x and y are empty")
    x = x.astype(np.float32)
    check_arrays(x, y)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise ModelRejected("bad_dataset", f"x has per-sample shape {list(x.shape[1:])}, the model takes "
                                f"{list(shape)}")
        x = x.reshape(len(x), *shape)
    return x, y.astype(np.int64)


def write_npz(path: str, x: np.ndarray, y: np.ndarray) -> None:
    try:
        np.savez_compressed(path, x=x, y=y)
    except OSError as e:
        raise ModelRejected("cannot_write", f"cannot write {path}: {e.strerror}") from None
