"""Store entries are published whole, and only a finished entry built the same way is skipped."""

from __future__ import annotations

import json
from pathlib import Path

from tools.model_store.manifest import MARKER, checkpoint_files, is_complete, publish

EXPECTED = {"source": "pkg==1.0", "converter_revision": 2, "dtype": "float32"}


def built_dir(parent: Path, payload: bytes = b"weights") -> Path:
    built = parent / "built"
    built.mkdir()
    (built / "model.safetensors").write_bytes(payload)
    (built / "config.json").write_text("{}", encoding="utf-8")
    return built


def test_publish_moves_the_entry_into_place_with_its_manifest(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    built = built_dir(scratch)
    (built / "model.safetensors").chmod(0o600)  # as safetensors writes it
    target = tmp_path / "store" / "entry"
    target.parent.mkdir()
    publish(built, target, EXPECTED, scratch)
    assert not built.exists() and is_complete(target, EXPECTED)
    manifest = json.loads((target / MARKER).read_text(encoding="utf-8"))
    assert manifest["files"] == {"config.json": 2, "model.safetensors": 7}
    assert [p.name for p in checkpoint_files(target)] == ["config.json", "model.safetensors"]
    assert (target / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_publish_replaces_an_older_entry(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "leftover.bin").write_bytes(b"old")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    publish(built_dir(scratch, b"new weights"), target, EXPECTED, scratch)
    assert not (target / "leftover.bin").exists()
    assert (target / "model.safetensors").read_bytes() == b"new weights"
    assert (scratch / "stale-entry" / "leftover.bin").exists()  # deleted with the scratch dir


def test_an_entry_is_incomplete_when_anything_differs(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "entry"
    publish(built_dir(scratch), target, EXPECTED, scratch)
    assert is_complete(target, EXPECTED)
    assert not is_complete(target, {**EXPECTED, "converter_revision": 3})  # newer converter
    assert not is_complete(target, {**EXPECTED, "dtype": "bfloat16"})  # other options
    assert not is_complete(tmp_path / "missing", EXPECTED)
    (target / "model.safetensors").write_bytes(b"half")  # truncated file
    assert not is_complete(target, EXPECTED)
    (target / MARKER).write_text("not json", encoding="utf-8")
    assert not is_complete(target, EXPECTED)


def test_files_in_subdirectories_are_named_by_their_path(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    built = built_dir(scratch)
    (built / "vocoder").mkdir(mode=0o700)
    (built / "vocoder" / "model.safetensors").write_bytes(b"vocoder")
    target = tmp_path / "entry"
    publish(built, target, EXPECTED, scratch)
    manifest = json.loads((target / MARKER).read_text(encoding="utf-8"))
    assert manifest["files"]["vocoder/model.safetensors"] == 7
    assert (target / "vocoder").stat().st_mode & 0o777 == 0o755
    assert is_complete(target, EXPECTED)
    (target / "vocoder" / "model.safetensors").write_bytes(b"half")  # truncated, nested
    assert not is_complete(target, EXPECTED)
