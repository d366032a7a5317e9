import pytest

pytestmark = pytest.mark.tui
