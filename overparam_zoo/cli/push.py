"""``overparam-zoo push DIR --repo-id OWNER/NAME``: upload an export folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "add_hub_arguments"]


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """``--private`` and ``--revision``, shared with ``export --push-to-hub``."""
    parser.add_argument("--private", action="store_true", help="create the hub repository private")
    parser.add_argument(
        "--revision", default=None, metavar="BRANCH", help="upload to this hub branch (created if absent)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload an export folder to the Hugging Face Hub",
        description="Checks that DIR is a complete export (model.safetensors, config.json, README.md) whose "
        "weights load strictly into the architecture config.json names, lists the files, and uploads them "
        "with huggingface_hub (pip install 'overparam-zoo[hub]'). Needs a token: `hf auth login` or HF_TOKEN.",
    )
    parser.add_argument("dir", help="an overparam-zoo export folder")
    parser.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="the model repository")
    add_hub_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="validate and list the files; upload nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.progress import Progress
    from overparam_zoo.sharing.publish import PUSH_STEPS, push_export

    with Progress("push", 1 if args.dry_run else PUSH_STEPS) as progress:
        push_export(
            args.dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
            progress=lambda note: progress.update(1, note=note),
            hub_progress_bars=progress.mode == "bar",
        )
    return 0
