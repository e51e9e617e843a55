"""Building and loading native kernels (engine/native.py): the cache, its fallbacks, failures."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from advrepair.engine import native

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")


@needs_compiler
def test_a_kernel_is_built_once_into_the_cache_and_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "answer.c").write_text("int answer(void) { return 42; }\n")
    monkeypatch.setattr(native, "SOURCES", tmp_path / "src")
    monkeypatch.setenv(native.CACHE_VARIABLE, str(tmp_path / "cache"))
    compiler = native._compiler()
    assert compiler is not None
    built = native._build("answer", compiler)
    assert built.parent == tmp_path / "cache" and built.name.startswith("answer-")
    stamp = built.stat().st_mtime_ns
    assert native._build("answer", compiler) == built
    assert built.stat().st_mtime_ns == stamp  # not compiled again
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no partial files left behind
    (tmp_path / "src" / "answer.c").write_text("int answer(void) { return 43; }\n")
    assert native._build("answer", compiler) != built  # another source, another library


@needs_compiler
def test_a_failed_build_warns_and_gives_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "broken_kernel.c").write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    monkeypatch.setenv(native.CACHE_VARIABLE, str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert native.load_kernel("broken_kernel") is None
    assert not any((tmp_path / "cache").iterdir())  # the partial output is removed


def test_switched_off_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.load_kernel("conv_pool") is None


def test_a_read_only_home_falls_back_to_a_private_temp_folder(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.delenv(native.CACHE_VARIABLE, raising=False)
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = native.cache_directory()
    assert folder == tmp_path / f"advrepair-native-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_temp_folder_others_can_write_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / f"advrepair-native-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(OSError, match="not a private folder"):
        native._private_temp_directory()
