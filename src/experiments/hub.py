"""Hugging Face Hub failures as one actionable line, for checkpoints (`model.path`) and benchmark files.

`huggingface_hub` raises typed errors; transformers wraps them in an `OSError` whose cause is the typed one.
`hub_problem` finds the typed error in the chain and says, for the config field that named the repository,
what to do: a gated repository (HTTP 401 without a token, 403 with one that lacks access) or a private one
needs a login or a token; a missing repository, revision or file needs a corrected id, revision or a local
copy; offline mode or an unreachable hub with nothing cached needs one run where the hub is reachable, or a
local copy. `HubError` is a `ConfigError`, so entry points print it in one line, without a traceback.
"""

from __future__ import annotations

from pathlib import Path

from experiments.validation import ConfigError

LOGIN = "log in with `hf auth login` or set HF_TOKEN to a token that has access"


class HubError(ConfigError):
    """A hub repository or file the job needs could not be fetched; the message says what to change."""


def hub_problem(error: BaseException, field: str, repo_id: str, repo_type: str = "model",
                revision: str | None = None) -> str:
    """One line saying why `repo_id` (the value of config `field`) could not be fetched, and the fix.

    Args:
        error: what the download or `from_pretrained` raised.
        field: the config field holding the repository id, e.g. `model.path`.
        repo_id: its value, a hub id (or a local folder that failed to load).
        repo_type: `model` or `dataset`.
        revision: the requested revision; None is the default branch.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = _first(error, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) or error
    reason = f"{type(cause).__name__}: {_first_line(cause)}"
    head = f"{field}={repo_id!r}"
    local = f"or copy it where the job runs and set {field}=/path/to/the/local/copy"
    if Path(repo_id).expanduser().exists():
        return f"{head}: the local copy could not be loaded ({reason}); point {field} at a complete copy"
    page = f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    rev = revision or constants.DEFAULT_REVISION
    status = cause.response.status_code if isinstance(cause, HfHubHTTPError) and cause.response is not None else None
    if isinstance(cause, GatedRepoError):
        return (f"{head}: {page} is a gated repository (HTTP {status}): request access on that page, then "
                f"{LOGIN}; {local}")
    if isinstance(cause, RepositoryNotFoundError):
        return (f"{head}: no {repo_type} repository {repo_id} on {constants.ENDPOINT} (HTTP {status}): check the "
                f"id; if the repository is private or gated, {LOGIN}; {local}")
    if isinstance(cause, RevisionNotFoundError):
        return (f"{head}: {page} has no revision {rev!r}: set model.revision to one of its branches, tags or "
                f"commit ids, or null for the default branch")
    if isinstance(cause, RemoteEntryNotFoundError):
        missing = str(cause.response.url).split(f"/resolve/{rev}/", 1)[-1] if cause.response is not None else "?"
        return f"{head}: {page} has no file {missing} at revision {rev!r}; {local}"
    if isinstance(cause, LocalEntryNotFoundError | OfflineModeIsEnabled) or constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else reason
        return (f"{head} (revision {rev!r}) is not in the hub cache {constants.HF_HUB_CACHE} and the hub cannot "
                f"be reached ({why}): run once where {constants.ENDPOINT} is reachable with the same HF_HOME to "
                f"fill the cache, {local}")
    return f"{head}: could not be fetched from {page} at revision {rev!r} ({reason}); {local}"


def _first(error: BaseException, *types: type[BaseException]) -> BaseException | None:
    """The first exception of one of `types` in `error`'s cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _first_line(error: BaseException) -> str:
    """The first non-empty line of the message, without the status prefix the Hub errors start with."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.endswith("Client Error.")] or lines
    return lines[0].rstrip(".") if lines else ""
