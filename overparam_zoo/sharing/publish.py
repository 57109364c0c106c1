"""Publishing an export folder to the Hugging Face Hub.

:func:`validate_export` checks that a folder is what ``overparam-zoo export`` writes and that
plain timm (or torchvision) can load it: the files, ``config.json``, the model card's front
matter, and the weights' keys and shapes against the base architecture, loaded with
``strict=True``, none of them NaN or Inf. :func:`push_export` then uploads exactly the listed files with
``huggingface_hub`` (``create_repo`` + ``upload_folder``); every failure, from a missing token to
an unreachable hub, is a one-line :class:`~overparam_zoo.errors.PublishError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

from overparam.state import describe_mismatch
from overparam_zoo.errors import PublishError, UnknownModelError
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write
from overparam_zoo.sharing.model_card import CARD_NAME
from overparam_zoo.sharing.verify import first_names, non_finite

__all__ = ["PUSH_STEPS", "PushResult", "hub_client", "hub_token", "push_export", "validate_export", "validate_repo_id"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROVENANCE_KEY = "overparam_zoo"
REQUIRED_FILES: tuple[str, ...] = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
PUSH_STEPS = 2
"""How many times :func:`push_export` calls its ``progress`` callback: validating, then uploading
(not in a dry run)."""

# the load lines of the model card (timm, transformers); their repo id is set to where the folder is pushed
_HUB_LOAD = re.compile(
    r'(timm\.create_model\("hf-hub:)[^"]*(", pretrained=True\))'
    r'|(\.from_pretrained\(")[^"]*("\))'
    r'|(pipeline\("image-classification", model=")[^"]*("\))'
)


@dataclass(frozen=True)
class PushResult:
    """What was (or, with ``dry_run``, would be) uploaded, and where."""

    repo_id: str
    files: list[Path]
    revision: str | None
    dry_run: bool
    commit_url: str | None = None


def hub_client() -> ModuleType:
    """``huggingface_hub``, or a :class:`PublishError` saying how to install it."""
    return require("huggingface_hub", "hub", "pushing to the hub")


def hub_token(token: str | None = None) -> str:
    """``token``, or the logged-in one (``HF_TOKEN``, ``hf auth login``); a :class:`PublishError` if none."""
    token = token or hub_client().get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token with write access"
        )
    return token


def validate_repo_id(repo_id: str) -> None:
    """Raise a :class:`PublishError` unless ``repo_id`` is a hub model id ``OWNER/NAME``."""
    hub_client()
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise PublishError(f"repo id {repo_id!r}: expected OWNER/NAME (a user or organization, then the model name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"repo id {repo_id!r}: {str(err).splitlines()[0]}") from err


def _files(folder: Path) -> list[Path]:
    """The files to upload: every regular file, hidden ones (``.git``, editor files) left out."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(rel)
    return files


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PublishError(f"{folder / CONFIG_NAME}: not readable JSON ({err})") from err
    if not isinstance(config, dict):
        raise PublishError(f"{folder / CONFIG_NAME}: expected a JSON object")
    for key, kind in (("architecture", str), ("num_classes", int), (PROVENANCE_KEY, dict)):
        if not isinstance(config.get(key), kind):
            raise PublishError(
                f"{folder / CONFIG_NAME}: '{key}' is missing or not a {kind.__name__}; "
                "expected the config.json that overparam-zoo export writes"
            )
    return config


def _check_card(folder: Path, hub: ModuleType) -> None:
    try:
        matter = hub.metadata_load(folder / CARD_NAME)
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PublishError(f"{folder / CARD_NAME}: front matter is not readable YAML ({first})") from err
    if not isinstance(matter, dict):
        raise PublishError(f"{folder / CARD_NAME}: no YAML front matter (a block between '---' lines at the top)")


def _base_model(config: dict[str, Any]) -> torch.nn.Module:
    """The architecture ``config.json`` names, built on the meta device (no memory, no init)."""
    from overparam_zoo.registry.variants import create_model

    arch, zoo = config["architecture"], config.get("zoo", "timm")
    kwargs = {**config.get("model_args", {}), "num_classes": config["num_classes"]}
    try:
        with torch.device("meta"):
            return create_model(arch, zoo=zoo, **kwargs)
    except UnknownModelError as err:
        raise PublishError(f"config.json names {arch!r}, which is not a {zoo} model") from err
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as err:  # arguments that do not build it
        raise PublishError(f"config.json does not build {arch}: {type(err).__name__}: {err}") from err


def _check_weights(folder: Path, config: dict[str, Any]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise PublishError(f"{path}: not a readable safetensors file ({err})") from err
    diverged = non_finite(state)
    if diverged:
        raise PublishError(
            f"{path} holds NaN or Inf in {first_names(diverged, len(state))}: diverged weights are not published"
        )
    model = _base_model(config)
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise PublishError(
            f"{path} does not load into {config['architecture']}(num_classes={config['num_classes']}): {mismatch}"
        )
    model.load_state_dict(state, strict=True, assign=True)


def validate_export(folder: str | Path) -> list[Path]:
    """Check that ``folder`` is a complete export that loads into its base architecture.

    Returns:
        The files to upload, relative to ``folder``.

    Raises:
        PublishError: naming the first problem (missing file, bad config, card without front
            matter, weights that do not load strictly into the architecture ``config.json`` names,
            weights holding NaN or Inf).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder; expected the output folder of overparam-zoo export")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(
            f"{folder} lacks {', '.join(missing)}; expected {', '.join(REQUIRED_FILES)} as overparam-zoo export "
            "writes them"
        )
    hub = hub_client()
    config = _read_config(folder)
    _check_card(folder, hub)
    _check_weights(folder, config)
    return _files(folder)


def _set_card_repo(folder: Path, repo_id: str) -> bool:
    """Point the card's hub load lines at ``repo_id`` (atomic rewrite); ``True`` if it changed."""
    card = folder / CARD_NAME
    text = card.read_text(encoding="utf-8")
    updated = _HUB_LOAD.sub(lambda m: repo_id.join(g for g in m.groups() if g is not None), text)
    if updated == text:
        return False
    atomic_write(card, lambda tmp: Path(tmp).write_text(updated, encoding="utf-8"))
    return True


def _hub_failure(err: Exception, repo_id: str, endpoint: str) -> PublishError:
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled

    line = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, OfflineModeIsEnabled):
        return PublishError(f"cannot reach the Hugging Face Hub: offline mode is on (unset HF_HUB_OFFLINE); {line}")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = " (is the token valid, with write access to the owner?)" if status in (401, 403) else ""
        return PublishError(f"the Hugging Face Hub refused the upload to {repo_id}{hint}: {line}")
    return PublishError(f"cannot upload to {endpoint}/{repo_id}: {type(err).__name__}: {line}")


def push_export(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
    hub_progress_bars: bool = True,
) -> PushResult:
    """Validate ``folder`` and upload it to the model repository ``repo_id`` (created if absent).

    Args:
        folder: an export folder.
        repo_id: ``OWNER/NAME`` on the hub.
        private: create the repository private (an existing one keeps its visibility).
        revision: a branch to upload to (created from ``main`` if absent); default ``main``.
        dry_run: validate and list the files, upload nothing, change nothing.
        token: a hub token; default the logged-in one (``HF_TOKEN`` or ``hf auth login``).
        log: receives one line per file and step.
        progress: called with a short description before each of :data:`PUSH_STEPS` steps.
        hub_progress_bars: ``False`` turns off huggingface_hub's upload bars for the upload
            (they redraw with carriage returns, noise in a log).

    Raises:
        PublishError: invalid folder or repo id, no ``huggingface_hub``, no token, or any failure
            of the hub (unreachable, offline mode, refused); one line each.
    """
    step = progress or (lambda _msg: None)
    folder = Path(folder)
    hub = hub_client()
    from huggingface_hub import constants

    step(f"validating {folder}")
    validate_repo_id(repo_id)
    files = validate_export(folder)
    if not dry_run:
        token = hub_token(token)
        if _set_card_repo(folder, repo_id):
            log(f"{CARD_NAME}: its load lines now name {repo_id}")
    endpoint = constants.ENDPOINT
    where = f"{endpoint}/{repo_id}" + (f" (revision {revision})" if revision else "")
    log(f"{'would upload' if dry_run else 'uploading'} {len(files)} files from {folder} to {where}:")
    for rel in files:
        log(f"  {rel.as_posix()}  ({(folder / rel).stat().st_size:,} bytes)")
    if dry_run:
        return PushResult(repo_id, files, revision, dry_run=True)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    step(f"uploading to {repo_id}")
    api = hub.HfApi(token=token, library_name="overparam-zoo")
    bars_were_off = are_progress_bars_disabled()
    if not hub_progress_bars:
        disable_progress_bars()
    try:  # the client's transport errors differ by version (requests, httpx, ...): every failure here is one
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            allow_patterns=[rel.as_posix() for rel in files],
            commit_message=f"Upload overparam-zoo export {folder.resolve().name}",
        )
    except Exception as err:
        raise _hub_failure(err, repo_id, endpoint) from err
    finally:
        if not bars_were_off:
            enable_progress_bars()
    url = getattr(commit, "commit_url", None)
    log(f"uploaded to {endpoint}/{repo_id}" + (f": {url}" if url else ""))
    return PushResult(repo_id, files, revision, dry_run=False, commit_url=url)
