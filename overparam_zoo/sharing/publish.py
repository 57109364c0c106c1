"""Publishing an export folder to the Hugging Face Hub.

:func:`validate_export` checks that a folder is what ``overparam-zoo export`` writes and that
plain timm (or torchvision) can load it: the files, ``config.json``, the model card's front
matter, and the weights' keys and shapes against the base architecture, loaded with
``strict=True``, none of them NaN or Inf, and a recorded collapse error within the bound the export
held it to (:data:`~overparam_zoo.sharing.verify.COLLAPSE_ERROR_BOUND`, or the
``allowed_collapse_error`` an export told to accept more records). :func:`push_export` then uploads exactly the listed files with
``huggingface_hub`` (``create_repo`` + ``upload_folder``). A bad folder is the one-line
:class:`~overparam_zoo.errors.ExportFolderError` every command gives for it (the folder is read by
:class:`~overparam_zoo.checkpoints.folder.ExportFolder`, its card by
:mod:`~overparam_zoo.sharing.model_card`); every failure of publishing itself, from a missing token
to an unreachable hub, is a one-line :class:`~overparam_zoo.errors.PublishError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from overparam_zoo.checkpoints.folder import CARD_NAME, ExportFolder
from overparam_zoo.errors import PublishError
from overparam_zoo.extras import require
from overparam_zoo.sharing.model_card import check_front_matter, point_card_at
from overparam_zoo.sharing.verify import COLLAPSE_ERROR_BOUND, first_names, non_finite

__all__ = ["PUSH_STEPS", "PushResult", "hub_client", "hub_token", "push_export", "validate_export", "validate_repo_id"]

PUSH_STEPS = 2
"""How many times :func:`push_export` calls its ``progress`` callback: validating, then uploading
(not in a dry run)."""


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


def _validated(folder: str | Path) -> tuple[ExportFolder, list[Path]]:
    export = ExportFolder.open(folder, card=True)
    hub_client()
    export.provenance  # noqa: B018 - checked: an export overparam-zoo wrote
    check_front_matter(export)
    state = export.read_weights()
    diverged = non_finite(state)
    if diverged:
        raise PublishError(
            f"{export.weights_path} holds NaN or Inf in {first_names(diverged, len(state))}: "
            "diverged weights are not published"
        )
    export.load_model(state, device="meta")
    error, allowed = export.collapse_error, export.allowed_collapse_error
    bound = COLLAPSE_ERROR_BOUND if allowed is None else allowed
    if not error <= bound:  # the export checked it; a folder from an older version, or edited by hand, may not hold
        held = f"the bound {bound:g} of an exact collapse" if allowed is None else f"the {bound:g} its export allowed"
        raise PublishError(
            f"{export.config_path} records a collapse error of {error:.1e}, above {held}: these weights do not compute "
            "what the op model computed, so they are not published; export the checkpoint again (the export names "
            "the first layer that disagrees)"
        )
    return export, _files(export.path)


def validate_export(folder: str | Path) -> list[Path]:
    """Check that ``folder`` is a complete export that loads into its base architecture.

    Returns:
        The files to upload, relative to ``folder``.

    Raises:
        ExportFolderError: naming the first problem of the folder (missing file, bad config, card
            without front matter, weights that do not load strictly into the architecture
            ``config.json`` names).
        PublishError: without ``huggingface_hub``, for weights holding NaN or Inf, or a recorded
            collapse error above the bound its export was held to.
    """
    return _validated(folder)[1]


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
        ExportFolderError: for a folder that is not a complete export (see :func:`validate_export`).
        PublishError: an invalid repo id, no ``huggingface_hub``, no token, diverged weights, or any
            failure of the hub (unreachable, offline mode, refused); one line each.
    """
    step = progress or (lambda _msg: None)
    folder = Path(folder)
    hub = hub_client()
    from huggingface_hub import constants

    step(f"validating {folder}")
    validate_repo_id(repo_id)
    export, files = _validated(folder)
    if not dry_run:
        token = hub_token(token)
        if point_card_at(export, repo_id):
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
