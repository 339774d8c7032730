"""``lipcert dataset``: write the ``.npz`` that ``--data`` takes, from an image folder or two ``.npy`` files."""

from __future__ import annotations

import click

from certify.cli import main, refusals_exit_2
from certify.errors import ModelRejected


def _shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(d) for d in value.split(","))
    except ValueError:
        raise ModelRejected("bad_argument", f"--shape {value!r}: expected D1,D2,... (per sample, no batch)") from None
    if not dims or min(dims) < 1:
        raise ModelRejected("bad_argument", f"--shape {value!r}: dimensions must be positive")
    return dims


def _model_shape(path: str) -> tuple[int, ...]:
    from certify.load import load_onnx
    from certify.verify import input_specs

    specs = input_specs(load_onnx(path), batch=1)
    if len(specs) != 1:
        raise ModelRejected("unsupported_model", f"a model with one input is expected, {path} has {len(specs)}")
    return tuple(specs[0][1][1:])


@main.command()
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--images", type=click.Path(), help="A folder with one sub-folder of images per class.")
@click.option("--x", "x_path", type=click.Path(dir_okay=False), help="A .npy of inputs (batch first).")
@click.option("--y", "y_path", type=click.Path(dir_okay=False), help="A .npy of integer labels.")
@click.option("--model", type=click.Path(dir_okay=False), help="Resize/reshape to this ONNX model's input.")
@click.option("--shape", metavar="D1,D2,...", help="The per-sample input shape, e.g. 3,32,32 (instead of --model).")
@refusals_exit_2
def dataset(output, images, x_path, y_path, model, shape):
    """Write OUTPUT (.npz with x float32 and y int64) from --images DIR or from --x X.npy --y Y.npy.

    Images are converted to the model's channels (1: grey, 3: RGB), resized to its height and width, scaled to
    [0, 1], and labelled by their sub-folder's position in sorted order.
    """
    from certify.dataset_builder import from_arrays, from_image_folder, write_npz

    if bool(images) == bool(x_path or y_path):
        raise ModelRejected("bad_argument", "give --images DIR, or --x X.npy and --y Y.npy")
    if (x_path is None) != (y_path is None):
        raise ModelRejected("bad_argument", "--x and --y go together")
    if model and shape:
        raise ModelRejected("bad_argument", "give --model or --shape, not both")
    dims = _shape(shape) if shape else _model_shape(model) if model else None
    if images:
        if dims is None:
            raise ModelRejected("bad_argument", "images need a size: pass --model MODEL.onnx or --shape C,H,W")
        x, y, names = from_image_folder(images, dims)
        labels = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    else:
        x, y = from_arrays(x_path, y_path, dims)
        labels = f"{len(set(y.tolist()))} distinct"
    write_npz(output, x, y)
    click.echo(f"wrote {output}: x {list(x.shape)} float32 in [{x.min():.4g}, {x.max():.4g}], y {len(y)} labels "
               f"({labels})")
