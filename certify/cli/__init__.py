"""The ``lipcert`` command line. Refusals print ``error: <code>: <message>`` and exit 2, never a traceback.

Each command lives in its own module of this package and registers itself on ``main``; this module holds the
group and the shared argument helpers.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from certify.errors import ModelRejected
from certify.threads import use_passive_wait

use_passive_wait()  # before any command imports torch


def _fail(code: str, message: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}))
    else:
        click.echo(f"error: {code}: {message}", err=True)
    sys.exit(2)


def refusals_exit_2(func):
    """Turn ModelRejected (and bad parameters) into the documented exit 2 message."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except ModelRejected as e:
            _fail(e.code, e.message, as_json)

    return wrapper


def parse_input_shapes(values: tuple[str, ...]) -> dict:
    """``name=1,3,224,224`` (repeatable) -> {name: [1, 3, 224, 224]}."""
    shapes = {}
    for v in values:
        name, sep, dims = v.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ModelRejected("bad_argument", f"--input-shape {v!r}: expected NAME=D1,D2,...") from None
    return shapes


def parse_range(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in value.split(","))
    except ValueError:
        raise ModelRejected("bad_argument", f"--input-range {value!r}: expected LO HI (or LO,HI)") from None
    if not lo < hi:
        raise ModelRejected("bad_argument", f"--input-range {value!r}: LO must be below HI")
    return lo, hi


PLUGIN_GROUP = "lipcert.commands"


def _plugins() -> dict:
    """Commands other packages add to ``lipcert``: entry points of group :data:`PLUGIN_GROUP` (the service's
    ``serve``, ``api`` and ``worker`` come this way, so the library never imports the service)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


class _Main(click.Group):
    def parse_args(self, ctx, args):
        from certify.cli._options import join_range_values

        return super().parse_args(ctx, join_range_values(args))

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_plugins()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and (plugin := _plugins().get(name)) is not None:
            command = plugin.load()
        return command


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipcert")
def main():
    """lipcert: Lipschitz certificates, adversarial attacks and signed robustness reports for ONNX classifiers."""




def _register_commands() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_commands()
