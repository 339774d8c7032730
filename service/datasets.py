"""The service's checks on evaluation sets: the library's (:mod:`certify.datasets`) at upload, and their fit with
the model and the job configuration at job creation."""

from __future__ import annotations

from certify.config import check_input_span
from certify.datasets import check_arrays, read_npz
from certify.errors import ModelRejected


def inspect_dataset(path: str, max_bytes: int) -> dict:
    """{"samples", "x_shape", "x_dtype", "y_dtype", "classes", "x_min", "x_max"}; refusals raise ModelRejected."""
    return check_arrays(*read_npz(path, max_bytes))


def _dims(shape) -> list:
    """Declared dimensions with the dynamic ones (None, a name, <= 0) as None."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _fits(declared, actual) -> bool:
    return len(declared) == len(actual) and all(d is None or d == a for d, a in zip(_dims(declared), actual))


def check_fit(model: dict, dataset: dict | None, config: dict | None = None) -> None:
    """What a job can know before it runs: its ``input_shapes`` name the model's inputs with fitting shapes, the
    dataset's samples fit the (single) input, and its labels are classes the model outputs. ModelRejected with a
    code otherwise (dynamic dimensions match anything); the dataset's values must lie in the job's
    ``input_range`` (datasets recorded before their span was kept are not checked)."""
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
    if dataset.get("x_min") is not None and config and config.get("input_range") is not None:
        check_input_span(dataset["x_min"], dataset["x_max"], config["input_range"])
