"""Generated files are current: each equals what `make generate` would write now."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.generate import GENERATED, REPO


@pytest.mark.parametrize("path", GENERATED, ids=lambda path: str(path.relative_to(REPO)))
def test_a_generated_file_is_current(path: Path) -> None:
    assert path.read_text() == GENERATED[path](), (
        f"{path.relative_to(REPO)} is stale: run `make generate` and commit the result")
