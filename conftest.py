"""Pytest set-up shared by tests/ and the docstring examples of src/lossatlas (doctests)."""

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _quiet_doctests(request, monkeypatch):
    """Docstring examples compare printed output: no progress bars there."""
    if isinstance(request.node, DoctestItem):
        monkeypatch.setenv("LOSSATLAS_QUIET", "1")
