"""Reading and checking an evaluation set (.npz with ``x`` and ``y``): one definition for the library
(:func:`load_dataset`: ``lipcert certify``, ``lipcert bounds``, the worker), the service's upload check and the
dataset builder (:mod:`certify.dataset_builder`), so all accept and refuse the same arrays with the same codes.

Loading never unpickles (``allow_pickle=False``); the declared uncompressed sizes and every array header are checked
before any array is read, so a small file cannot expand into a huge allocation.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile

import numpy as np

from certify.defaults import check_input_span
from certify.errors import ModelRejected

MAX_DATASET_BYTES = 1024**3  # the largest .npz the library reads from disk


def _member_names(z: zipfile.ZipFile, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """{array name: member}; only ``<name>.npy`` members, each name once, within the uncompressed cap."""
    infos = z.infolist()
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise ModelRejected("dataset_too_large", f"the arrays would take {total} bytes, over the cap of {max_bytes}")
    arrays: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or name in arrays:
            raise ModelRejected("bad_dataset", f"the .npz member {info.filename!r} is not a single .npy array "
                                "(every member must be NAME.npy, each name once)")
        arrays[name] = info
    return arrays


def _read_array(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, its header checked before anything is allocated: no pickles, and a shape whose bytes
    fit in the member (a header may claim any shape; numpy would try to allocate it)."""
    fmt = np.lib.format
    with z.open(info) as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except ValueError as e:
            raise ModelRejected("bad_dataset", f"{info.filename}: not a valid .npy header: {e}") from None
        data_bytes = info.file_size - f.tell()
    if dtype.hasobject:
        raise ModelRejected("dataset_pickled", "the dataset holds pickled objects; it cannot be read without pickle, "
                            "which is never used")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:
        raise ModelRejected("bad_dataset", f"{info.filename}: the header claims shape {list(shape)} ({claimed} bytes) "
                            f"but the member holds {data_bytes} bytes")
    with z.open(info) as f:
        return fmt.read_array(f, allow_pickle=False)


def read_npz(source, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of an .npz (a path or the bytes), read without unpickling and without trusting its declared sizes."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with zipfile.ZipFile(source) as z:
            arrays = _member_names(z, max_bytes)
            missing = [k for k in ("x", "y") if k not in arrays]
            if missing:
                raise ModelRejected("dataset_missing_arrays", "the .npz needs arrays 'x' and 'y'; missing "
                                    f"{', '.join(missing)}")
            return _read_array(z, arrays["x"]), _read_array(z, arrays["y"])
    except (zipfile.BadZipFile, zipfile.LargeZipFile):
        raise ModelRejected("not_npz", "the dataset is not a readable .npz (zip) archive") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:  # corrupt members, unknown compression
        raise ModelRejected("bad_dataset", f"cannot read the arrays: {e}") from None


def check_arrays(x: np.ndarray, y: np.ndarray) -> dict:
    """{"samples", "x_shape", "x_dtype", "y_dtype", "classes", "x_min", "x_max"} of valid arrays;
    ModelRejected("bad_dataset") else."""
    if x.dtype.kind != "f":
        raise ModelRejected("bad_dataset", f"x must be floating point, not {x.dtype}")
    if y.dtype.kind not in "iu":
        raise ModelRejected("bad_dataset", f"y must hold integer class labels, not {y.dtype}")
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ModelRejected("bad_dataset", f"x {list(x.shape)} and y {list(y.shape)} must have the same non-zero "
                            "length (batch first) and y must be 1-D")
    if not np.isfinite(x).all():
        raise ModelRejected("bad_dataset", "x contains NaN or infinite values")
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


def load_dataset(source, input_shape: tuple, samples: int, input_range=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A ``.npz`` with ``x`` (float, batch first, matching the model input) and ``y`` (integer labels).

    Read and checked as the service's upload is (:func:`read_npz`, :func:`check_arrays`), never unpickled; with
    ``input_range`` (lo, hi), an ``x`` outside it is refused too (raw pixels in [0, 255] against the default [0, 1]
    would make every eps meaningless). Returns the first ``samples`` rows and the dataset record
    (sha256 of the exact file bytes, count).
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            if os.path.getsize(source) > MAX_DATASET_BYTES:
                raise ModelRejected("dataset_too_large", f"dataset is over {MAX_DATASET_BYTES} bytes")
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelRejected("bad_dataset", f"cannot read dataset {source}: {e.strerror}") from None
    x, y = read_npz(data, MAX_DATASET_BYTES)
    check_arrays(x, y)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ModelRejected("dataset_model_mismatch", f"x has per-sample shape {list(x.shape[1:])}, the model takes "
                            f"{list(input_shape)}")
    if input_range is not None:
        check_input_span(float(x.min()), float(x.max()), input_range)
    record = {"sha256": hashlib.sha256(data).hexdigest(), "samples": int(min(samples, len(y)))}
    return x[:samples].astype(np.float32), y[:samples].astype(np.int64), record
