"""``overparam-zoo list [PATTERN]``: the registered variants."""

from __future__ import annotations

import argparse

from overparam_zoo.registry.zoos import ZOOS

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list registered op variants")
    parser.add_argument("pattern", nargs="?", default=None, help="glob on the variant name, e.g. 'resnet*_op_d2*'")
    parser.add_argument("--zoo", choices=ZOOS, default=None)
    parser.add_argument("--base", default=None, metavar="GLOB", help="glob on the base model, e.g. 'efficientnet_b*'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.errors import UnknownModelError
    from overparam_zoo.registry.variants import get_variant, list_variants

    names = list_variants(args.pattern, args.zoo, args.base)
    for zoo in ZOOS:
        if args.zoo not in (None, zoo):
            continue
        for name in names:
            try:
                variant = get_variant(name, zoo)
            except UnknownModelError:  # registered in the other zoo only
                continue
            print(f"{name:36s} {zoo:12s} base={variant.base:24s} recipe={variant.recipe.path.name}")
    if not names:
        print("no variants match")
        return 1
    return 0
