"""Checks on uploaded evaluation sets (.npz with ``x`` and ``y``) and on their fit with a model.

Loading never unpickles (``allow_pickle=False``) and the declared uncompressed sizes are checked before any array
is read, so a small zip cannot expand into a huge allocation.
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

from certify.errors import ModelRejected


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
        raise ModelRejected("dataset_pickled", "the dataset holds pickled objects; they are not accepted")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:
        raise ModelRejected("bad_dataset", f"{info.filename}: the header claims shape {list(shape)} ({claimed} bytes) "
                            f"but the member holds {data_bytes} bytes")
    with z.open(info) as f:
        return fmt.read_array(f, allow_pickle=False)


def read_npz(path: str, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of an .npz, read without unpickling and without trusting its declared sizes."""
    try:
        with zipfile.ZipFile(path) as z:
            arrays = _member_names(z, max_bytes)
            missing = [k for k in ("x", "y") if k not in arrays]
            if missing:
                raise ModelRejected("dataset_missing_arrays",
                                    f"the .npz needs arrays x and y; missing {', '.join(missing)}")
            return _read_array(z, arrays["x"]), _read_array(z, arrays["y"])
    except (zipfile.BadZipFile, zipfile.LargeZipFile):
        raise ModelRejected("not_npz", "the dataset is not an .npz (zip) archive") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:  # corrupt members, unknown compression
        raise ModelRejected("bad_dataset", f"cannot read the arrays: {e}") from None


def inspect_dataset(path: str, max_bytes: int) -> dict:
    """{"samples", "x_shape", "x_dtype", "y_dtype", "classes"}; refusals raise ModelRejected."""
    x, y = read_npz(path, max_bytes)
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
    }


def _dims(shape) -> list:
    """Declared dimensions with the dynamic ones (None, a name, <= 0) as None."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _fits(declared, actual) -> bool:
    return len(declared) == len(actual) and all(d is None or d == a for d, a in zip(_dims(declared), actual))


def check_fit(model: dict, dataset: dict | None, config: dict | None = None) -> None:
    """What a job can know before it runs: its ``input_shapes`` name the model's inputs with fitting shapes, the
    dataset's samples fit the (single) input, and its labels are classes the model outputs. ModelRejected with a
    code otherwise (dynamic dimensions match anything)."""
    inputs = model.get("inputs") or []
    by_name = {i["name"]: i["shape"] for i in inputs}
    shapes = (config or {}).get("input_shapes") or {}
    for name, shape in shapes.items():
        if name not in by_name:
            raise ModelRejected("input_shape_mismatch", f"input_shapes names {name!r}; the model's inputs are "
                                f"{', '.join(map(repr, by_name)) or 'none'}")
        if not _fits(by_name[name], shape):
            raise ModelRejected("input_shape_mismatch", f"input_shapes gives {name!r} the shape {shape}, but the "
                                f"model declares {by_name[name]}")
    if dataset is None:
        return
    if len(inputs) != 1:
        raise ModelRejected("dataset_model_mismatch", f"datasets need a model with one input; it has {len(inputs)}")
    expected = inputs[0]["shape"]
    sample = dataset["x_shape"][1:]
    given = shapes.get(inputs[0]["name"])
    if not _fits(expected[1:], sample) or (given is not None and list(given[1:]) != list(sample)):
        raise ModelRejected(
            "dataset_model_mismatch",
            f"dataset samples have shape {sample}, but the model input {inputs[0]['name']!r} is "
            f"{given or expected} (batch first)",
        )
    outputs = model.get("outputs") or []
    classes = _dims(outputs[0]["shape"])[-1] if outputs and outputs[0].get("shape") else None
    if classes is not None and dataset.get("classes", 0) > classes:
        raise ModelRejected("labels_out_of_range", f"the dataset has labels up to {dataset['classes'] - 1}, but the "
                            f"model outputs {classes} classes (labels 0 to {classes - 1})")
