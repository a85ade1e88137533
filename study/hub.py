"""Weights from the Hugging Face Hub: ``hf://OWNER/REPO/FILE[@REVISION]`` for ``--backbone`` and ``--rgb-weights``.

One resolver for every weights flag. A reference is resolved with ``huggingface_hub.hf_hub_download``: from the
local Hub cache first (so it works with ``HF_HUB_OFFLINE=1`` and without a network), downloaded into that cache
when the file is not there and the Hub may be reached. The resolved file is then an ordinary weights file (hashed
and loaded like any path); its origin ``hf://OWNER/REPO/FILE@<commit>`` is what study.json records.

``huggingface_hub`` is an optional extra (``pip install "hsistudy[hub]"``): plain paths never need it, and a
reference without it stops with one line saying so. The cache folder is ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when a reference is resolved, not at import), in the
Hub's layout: ``models--OWNER--REPO/refs/<branch>`` holding a commit id, ``snapshots/<commit>/FILE``.
No torch, no Ray: the study's settings check a reference's syntax before anything starts.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from study.errors import ConfigError

SCHEME = "hf://"
EXTRA = 'pip install "hsistudy[hub]"'
_OFFLINE_VALUES = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://OWNER/REPO/FILE[@REVISION]`` (FILE may lie in folders of the repository)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def show(self, commit: str | None = None) -> str:
        """The reference as text; with ``commit``, pinned to it (what study.json records as the origin)."""
        rev = commit or self.revision
        return f"{SCHEME}{self.repo_id}/{self.filename}" + (f"@{rev}" if rev else "")


def is_hub_ref(value: object) -> bool:
    """Whether a weights setting names a Hub file rather than a local path."""
    return isinstance(value, str) and value.startswith(SCHEME)


def weights_arg(text: str) -> Path | str:
    """argparse type of a weights flag: an ``hf://`` reference stays text (a Path would fold its ``//``)."""
    return text if is_hub_ref(text) else Path(text)


def parse_hub_ref(text: str, flag: str = "--backbone") -> HubRef:
    """``hf://OWNER/REPO/FILE[@REVISION]`` -> :class:`HubRef`; ConfigError naming the expected form."""
    body = text[len(SCHEME):] if text.startswith(SCHEME) else text
    path, _, revision = body.partition("@")
    parts = path.split("/")
    if len(parts) < 3 or not all(parts) or (revision == "" and "@" in body):
        raise ConfigError(f"{flag} {text}: a Hugging Face reference is hf://OWNER/REPO/FILE[@REVISION], e.g. "
                          "hf://WeilKon/HyperSL/5_base_mask95_checkpoint.pt")
    return HubRef(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or None)


def check_hub_ref(text: str, flag: str) -> None:
    """Syntax and the optional package, before anything starts (nothing is looked up or downloaded here)."""
    parse_hub_ref(text, flag)
    try:
        found = importlib.util.find_spec("huggingface_hub") is not None
    except ValueError:  # a module object without a spec (e.g. blocked in sys.modules): not usable
        found = False
    if not found:
        raise ConfigError(f"{flag} {text} needs the huggingface_hub package: {EXTRA}")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set: never reach the Hub, use the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def repo_folder(repo_id: str) -> str:
    """The cache folder name of a model repository (``models--OWNER--REPO``)."""
    return "models--" + repo_id.replace("/", "--")


def cached_file(repo_id: str, filename: str, cache: Path | None = None) -> Path | None:
    """A file of a repository already in the cache (read by hand: no ``huggingface_hub`` needed): the snapshot
    ``refs/main`` names, else the newest snapshot holding it; None when absent. Never downloads."""
    root = (cache or hub_cache_dir()) / repo_folder(repo_id)
    ref = root / "refs" / "main"
    if ref.is_file():
        pinned = root / "snapshots" / ref.read_text().strip() / filename
        if pinned.is_file():
            return pinned
    found = sorted((root / "snapshots").glob(f"*/{filename}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _commit_of(path: Path) -> str | None:
    """The snapshot (commit id) a cached file lies in: the folder after ``snapshots``."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def resolve_hub_file(text: str, flag: str = "--backbone") -> tuple[Path, str]:
    """(local file, origin ``hf://OWNER/REPO/FILE@<commit>``) of a Hub reference: the cache first, a download
    only where the file is not cached and the Hub may be reached (not under ``HF_HUB_OFFLINE``).

    ConfigError (one line) when the package is missing, or the file is not cached and cannot be fetched: it names
    the repository, the file and the cache folder.
    """
    ref = parse_hub_ref(text, flag)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConfigError(f"{flag} {text} needs the huggingface_hub package: {EXTRA}") from None
    cache = hub_cache_dir()
    where = f"repository {ref.repo_id}, file {ref.filename}" + (f", revision {ref.revision}" if ref.revision else "")
    try:
        path = hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=str(cache),
                               local_files_only=True)
    except Exception as cached_exc:  # not in the cache (LocalEntryNotFoundError), or the cache is unreadable
        if offline():
            raise ConfigError(
                f"{flag} {text}: {where} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; "
                "download it once where the Hub is reachable (the same command without HF_HUB_OFFLINE), or put "
                f"the file in {cache / repo_folder(ref.repo_id)}/snapshots/<commit>/ with refs/main naming the "
                f"commit ({type(cached_exc).__name__})") from None
        try:
            path = hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=str(cache))
        except Exception as exc:  # network down, no such repo or file, gated repo: one line
            raise ConfigError(
                f"{flag} {text}: cannot fetch {where} into the Hugging Face cache {cache} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); check the "
                "name on huggingface.co, the network, or download the file and pass its path") from None
    local = Path(path)
    commit = _commit_of(local) or ref.revision or "unknown"
    return local, ref.show(commit)


def resolve_weights(value: str | Path, flag: str) -> tuple[Path, str | None]:
    """Any weights setting -> (local file, Hub origin or None): ``hf://`` references through the cache, paths
    as they are (their existence is checked by the caller, which knows the expected content)."""
    if is_hub_ref(value):
        return resolve_hub_file(str(value), flag)
    return Path(value).expanduser(), None
