"""Shared fixtures. Peers are real programs; when one is missing the test skips locally and
fails under CI=true (a skipped test is not a passing one)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pydicom
import pytest

from dicomnode.config import Config, ScrubConfig
from dicomnode.scrub import Scrubber, build_scrubber

SECRET = b"test-secret-0123456789abcdef0123456789"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def load_tool(name: str) -> ModuleType:
    """A script of ``tools/`` as a module (they are scripts, not a package)."""
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(name, root / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def unavailable(message: str) -> NoReturn:
    """A test that cannot run here: it fails under CI (``CI=true``), where a missing peer or
    dependency is a failure, and skips elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of a peer program; fail under CI, skip elsewhere, when it is not installed."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (apt-get install; 'make test' does it as root)")
    return path


def bundled_files() -> list[Path]:
    """pydicom's bundled test files (those on disk; nothing is downloaded)."""
    return sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_SECRET_FILE", raising=False)
    monkeypatch.setenv("DICOMNODE_SECRET", SECRET.decode())
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)


@pytest.fixture
def make_scrubber() -> Callable[..., Scrubber]:
    def make(options: tuple[str, ...] | None = None, **settings: object) -> Scrubber:
        fields: dict[str, object] = dict(settings)
        if options is not None:
            fields["options"] = options
        return build_scrubber(Config(scrub=ScrubConfig.model_validate(fields)), secret=SECRET)

    return make


@pytest.fixture
def scrubber(make_scrubber: Callable[..., Scrubber]) -> Scrubber:
    """The scrubber of the embedded default configuration."""
    return make_scrubber()


@pytest.fixture
def basic(make_scrubber: Callable[..., Scrubber]) -> Scrubber:
    """The Basic Profile with no option."""
    return make_scrubber(options=())


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
