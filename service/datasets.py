"""Checks on uploaded evaluation sets (.npz with ``x`` and ``y``) and on their fit with a model.

Loading never unpickles (``allow_pickle=False``) and the declared uncompressed sizes are checked before any array
is read, so a small zip cannot expand into a huge allocation.
"""

from __future__ import annotations

import zipfile

import numpy as np

from certify.config import check_input_span
from certify.errors import ModelRejected


def _members(path: str, max_bytes: int) -> dict[str, int]:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError):
        raise ModelRejected("not_npz", "the dataset is not an .npz (zip) archive") from None
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise ModelRejected("dataset_too_large", f"the arrays would take {total} bytes, over the cap of {max_bytes}")
    return {i.filename: i.file_size for i in infos}


def inspect_dataset(path: str, max_bytes: int) -> dict:
    """{"samples", "x_shape", "x_dtype", "y_dtype", "classes", "x_min", "x_max"}; refusals raise ModelRejected."""
    members = _members(path, max_bytes)
    missing = [k for k in ("x", "y") if f"{k}.npy" not in members]
    if missing:
        raise ModelRejected("dataset_missing_arrays", f"the .npz needs arrays x and y; missing {', '.join(missing)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise ModelRejected("dataset_pickled", "the dataset holds pickled objects; they are not accepted") \
                from None
        raise ModelRejected("bad_dataset", f"cannot read the arrays: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ModelRejected("bad_dataset", f"cannot read the arrays: {e}") from None
    if x.dtype.kind != "f":
        raise ModelRejected("bad_dataset", f"x must hold floats, not {x.dtype}")
    if y.dtype.kind not in "iu":
        raise ModelRejected("bad_dataset", f"y must hold integer class labels, not {y.dtype}")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ModelRejected("bad_dataset", "x must be (N, ...) and y (N,) with the same N > 0; "
                            f"got x {list(x.shape)}, y {list(y.shape)}")
    if not np.isfinite(x).all():
        raise ModelRejected("bad_dataset", "x holds NaN or infinite values")
    if (y < 0).any():
        raise ModelRejected("bad_dataset", "y holds negative labels")
    return {
        "samples": int(x.shape[0]),
        "x_shape": [int(d) for d in x.shape],
        "x_dtype": str(x.dtype),
        "y_dtype": str(y.dtype),
        "classes": int(y.max()) + 1,
        "x_min": float(x.min()),
        "x_max": float(x.max()),
    }


def check_fit(model: dict, dataset: dict, input_range=None) -> None:
    """The dataset's sample shape must match the model's (single) input (dynamic dimensions match anything), and
    its values the job's declared input range (datasets recorded before their span was kept are not checked)."""
    if input_range is not None and "x_min" in dataset:
        check_input_span(dataset["x_min"], dataset["x_max"], input_range)
    inputs = model.get("inputs") or []
    if len(inputs) != 1:
        raise ModelRejected("dataset_model_mismatch", f"datasets need a model with one input; it has {len(inputs)}")
    expected = inputs[0]["shape"]
    sample = dataset["x_shape"][1:]
    if len(expected) != len(sample) + 1 or any(
        isinstance(e, int) and e > 0 and e != s for e, s in zip(expected[1:], sample)
    ):
        raise ModelRejected(
            "dataset_model_mismatch",
            f"dataset samples have shape {sample}, but the model input {inputs[0]['name']!r} is {expected} "
            "(batch first)",
        )
