"""Options shared by ``certify``, ``bounds`` and ``submit``, checked while the command line is parsed.

``--eps 0.05,0.1`` and ``--eps 0.05 --eps 0.1`` mean the same everywhere; norms are matched case-insensitively.
A bad value is refused here, before any command imports torch, with the usual ``error: bad_argument: ...``.
Defaults are not filled in here: the job configuration (``certify.config``, from ``certify.defaults``) fills them.
"""

from __future__ import annotations

import sys

import click

from certify.defaults import CERTIFIERS, DEFAULTS, NORMS


def refuse(message: str) -> None:
    click.echo(f"error: bad_argument: {message}", err=True)
    sys.exit(2)


def _items(values) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _epsilons(ctx, param, values) -> list[float] | None:
    try:
        eps = [float(item) for item in _items(values)]
    except ValueError:
        refuse(f"--eps {' '.join(values)!r}: expected numbers, comma-separated or repeated")
    if any(not 0 < e < float("inf") for e in eps):
        refuse(f"--eps {' '.join(values)!r}: every radius must be a positive number")
    return eps or None


def _names_from(flag: str, allowed):
    """A callback for a list option whose values, comma-separated or repeated, are names out of ``allowed``
    (case-insensitive, duplicates dropped, order kept)."""

    def parse(ctx, param, values) -> list[str] | None:
        names = [item.lower() for item in _items(values)]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            refuse(f"{flag} {', '.join(unknown)}: one of {', '.join(allowed)}")
        return list(dict.fromkeys(names)) or None

    return parse


_norms = _names_from("--norm", NORMS)
_certifiers = _names_from("--certifiers", CERTIFIERS)


def certifiers_option(f):
    return click.option("--certifiers", "certifiers", multiple=True, callback=_certifiers, metavar="NAME[,NAME...]",
                        help="Sound certification methods, comma-separated or repeated: global (Lipschitz), ibp, "
                             f"crown, local-lipschitz, alpha-crown [default: {_defaults('certifiers')}].")(f)


def _defaults(key: str) -> str:
    return ",".join(str(v) for v in DEFAULTS[key])


def eps_option(f):
    return click.option("--eps", "epsilons", multiple=True, callback=_epsilons, metavar="E[,E...]",
                        help=f"Radii, comma-separated or repeated [default: {_defaults('epsilons')}].")(f)


def norms_option(f):
    return click.option("--norm", "norms", multiple=True, callback=_norms, metavar="l2|linf[,...]",
                        help=f"Norms, comma-separated or repeated [default: {_defaults('norms')}].")(f)


def _single_norm(ctx, param, value) -> str:
    norms = _norms(ctx, param, [value]) or [DEFAULTS["norms"][0]]
    if len(norms) != 1:
        refuse(f"--norm {value!r}: this command takes one norm")
    return norms[0]


def single_norm_option(f):
    return click.option("--norm", default=DEFAULTS["norms"][0], callback=_single_norm, metavar="l2|linf",
                        show_default=True)(f)


def _attacks(ctx, param, value) -> str | list[str] | None:
    if value is None:
        return None
    names = _items([value])
    if not names:
        refuse("--attacks: a preset (none, quick, standard, thorough) or attack names, comma-separated")
    return names[0] if len(names) == 1 and "," not in value else names


def attacks_option(f):
    return click.option("--attacks", default=None, callback=_attacks, metavar="PRESET|NAME[,NAME...]",
                        help="A preset (none, quick, standard, thorough) or attack names, comma-separated "
                             f"[default: {DEFAULTS['attacks']}].")(f)


RANGE_FLAG = "--input-range"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def join_range_values(args: list[str]) -> list[str]:
    """``--input-range LO HI`` -> ``--input-range LO,HI``: click options take a fixed number of values, and both
    forms are accepted (``-1 1`` included: the token after the flag is its value, never an option)."""
    args, out = list(args), []
    while args:
        token = args.pop(0)
        out.append(token)
        if token == "--":
            break
        flag, eq, value = token.partition("=")
        if flag != RANGE_FLAG or not (eq or args):
            continue
        value = value if eq else args.pop(0)
        if "," not in value and args and _is_number(args[0]):
            value = f"{value},{args.pop(0)}"
        out[-1:] = [RANGE_FLAG, value]
    return out + args


def _input_range(ctx, param, value) -> list[float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(p) for p in value.split(","))
    except ValueError:
        refuse(f"--input-range {value!r}: expected LO HI (or LO,HI)")
    if not lo < hi:
        refuse(f"--input-range {value!r}: LO must be below HI")
    return [lo, hi]


def input_range_option(f):
    return click.option("--input-range", default=None, callback=_input_range, metavar="LO HI",
                        help="The valid input range (in raw units when --scale/--mean/--std are given) "
                             f"[default: {_defaults('input_range')}].")(f)


def _number(text: str) -> float:
    """``0.5`` or a fraction such as ``1/255``."""
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(num)


def _numbers(ctx, param, value) -> list[float] | None:
    if value is None:
        return None
    try:
        numbers = [_number(v) for v in _items([value])]
    except (ValueError, ZeroDivisionError):
        refuse(f"--{param.name} {value!r}: expected numbers (or fractions like 1/255), comma-separated")
    if not numbers:
        refuse(f"--{param.name} {value!r}: expected at least one number")
    return numbers


def preprocessing_options(f):
    """``--scale``, ``--mean``, ``--std``: model input = (x * scale - mean) / std, prepended to the graph."""
    f = click.option("--channels-last", is_flag=True, default=False,
                     help="The per-channel --mean/--std apply to the input's last axis (NHWC), not axis 1.")(f)
    f = click.option("--std", default=None, callback=_numbers, metavar="S[,S...]",
                     help="Per-channel divisor of the model's normalisation (after --scale and --mean).")(f)
    f = click.option("--mean", default=None, callback=_numbers, metavar="M[,M...]",
                     help="Per-channel mean the model subtracts (after --scale).")(f)
    return click.option("--scale", default=None, callback=_numbers, metavar="S",
                        help="Multiply raw inputs first, e.g. 1/255 for pixels in 0..255. With any of --scale, "
                             "--mean, --std, eps and --input-range are in raw units.")(f)


def preprocessing(scale, mean, std, channels_last: bool = False) -> dict | None:
    """The job configuration's ``preprocessing`` from the options (None when none was given)."""
    if scale is None and mean is None and std is None:
        if channels_last:
            refuse("--channels-last needs --mean or --std")
        return None
    if scale is not None and len(scale) != 1:
        refuse("--scale takes one number")
    spec = {"scale": scale[0] if scale else 1.0, "mean": mean or [0.0], "std": std or [1.0]}
    if min(spec["std"]) <= 0 or spec["scale"] <= 0:
        refuse("--scale and --std must be positive")
    if channels_last:
        spec["channel_axis"] = -1
    return spec


analyses_option = click.option(
    "--analysis", "analyses", multiple=True, callback=lambda ctx, param, value: list(value) or None,
    metavar="NAME", help="An optional analysis to add to the report (repeatable): units (units versus random "
                         "directions, docs/units.md).")


def _read_properties(ctx, param, paths) -> list[dict] | None:
    """``--property FILE`` (repeatable): each VNN-LIB file's text, named by its file name without the extension."""
    import os

    entries, names = [], set()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            refuse(f"--property {path}: cannot read it: {getattr(e, 'strerror', None) or e}")
        name = base = os.path.splitext(os.path.basename(path))[0] or "property"
        k = 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.add(name)
        entries.append({"name": name, "vnnlib": text})
    return entries or None


def properties_options(f):
    """``--property FILE`` (repeatable) and ``--property-timeout S``: VNN-LIB properties decided in the job."""
    f = click.option("--property-timeout", "property_timeout", type=float, default=None, metavar="S",
                     help="Time budget per property in seconds (default 60), within the job's budget.")(f)
    return click.option("--property", "properties", multiple=True, callback=_read_properties, metavar="FILE",
                        help="A VNN-LIB property to decide on the model (repeatable); the report records holds / "
                             "violated / unknown for each (docs/vnnlib.md).")(f)
