"""``bsym models``: list the registered models, count their parameters.

Importing this module does not import torch; the handlers do.
"""

from __future__ import annotations

import argparse

from bsym.errors import UsageError


def _list(args):
    from bsym.models import available, get_spec

    specs = [get_spec(name) for name in available()]
    presets = [", ".join(sorted(spec.presets)) for spec in specs]
    width = max([4, *(len(spec.name) for spec in specs)])
    pwidth = max([7, *map(len, presets)])
    print(f"{'name':<{width}}  {'presets':<{pwidth}}  description")
    for spec, names in zip(specs, presets):
        print(f"{spec.name:<{width}}  {names:<{pwidth}}  {spec.description}")


def _grouped(counts):
    """Rows (label, count, is_subtotal) with a subtotal per "group." prefix."""
    rows, groups = [], {}
    for key, value in counts.items():
        if key != "total" and "." in key:
            groups.setdefault(key.split(".", 1)[0], []).append((key.split(".", 1)[1], value))
        elif key != "total":
            rows.append((key, value, False))
    for group, parts in groups.items():
        rows.append((group, sum(v for _, v in parts), True))
        rows.extend((f"  {part}", value, False) for part, value in parts)
    return rows


def _params(args):
    from bsym.models import build

    overrides = {}
    if args.rois is not None:
        overrides["n_rois"] = args.rois
    if args.timepoints is not None:
        overrides["n_timepoints"] = args.timepoints
    for item in args.set or ():
        key, _, value = item.partition("=")
        overrides[key] = _literal(value)
    try:
        model = build(args.name, preset=args.preset, **overrides)
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(err.args[0] if isinstance(err, KeyError) and err.args else err) \
            from None
    counts = model.param_counts()
    rows = _grouped(counts)
    width = max([len(label) for label, _, _ in rows] + [len("total")])
    size = ", ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"{args.name} (preset {args.preset}{', ' + size if size else ''})")
    print(f"{'component':<{width}}  {'parameters':>12}")
    for label, value, subtotal in rows:
        text = f"{value:>12,}"
        print(f"{label:<{width}}  {text}{'  (' + _human(value) + ')' if subtotal else ''}")
    print(f"{'total':<{width}}  {counts['total']:>12,}  ({_human(counts['total'])})")


def _human(n):
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _literal(text):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_parser(subparsers):
    """Add ``models list`` and ``models params`` to a ``bsym`` subparsers object."""
    models = subparsers.add_parser("models", help="list models and count their parameters")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    listing = msub.add_parser("list", help="registered models (built-in and plugins)",
                              description="Every model bsym can build: built-ins and those "
                              "installed packages register in the 'bsym.models' entry-point "
                              "group.")
    listing.set_defaults(func=_list)

    params = msub.add_parser("params", help="parameter counts per component and in total",
                             description="Build a model (no data needed) and print its "
                             "parameter counts per component and in total.")
    params.add_argument("name", help="model name (see `bsym models list`)")
    params.add_argument("--preset", default="tiny", help="preset, e.g. tiny or paper "
                        "(default tiny)")
    params.add_argument("--rois", type=_positive, default=None, help="number of ROIs R")
    params.add_argument("--timepoints", type=_positive, default=None,
                        help="window length T in time points")
    params.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any other constructor argument, e.g. --set branches=fmri "
                        "(repeatable)")
    params.set_defaults(func=_params)
    return models
