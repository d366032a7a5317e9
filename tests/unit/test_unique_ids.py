"""Ids typed by a unique beginning, like git's short hashes."""

from __future__ import annotations

import pytest

from shared.errors import AmbiguousId, unique_match

IDS = ["job-1a2b", "job-1a3c", "job-9f00"]


@pytest.mark.parametrize("given, found", [
    ("job-1a2b", "job-1a2b"), ("1a2", "job-1a2b"), ("job-9", "job-9f00"), ("9f", "job-9f00"), ("zz", None), ("", None),
])
def test_a_unique_beginning_names_its_id(given, found):
    assert unique_match(given, IDS, kind="job", prefix="job-") == found


def test_a_shared_beginning_is_refused_with_the_candidates():
    with pytest.raises(AmbiguousId) as err:
        unique_match("1a", IDS, kind="job", prefix="job-")
    assert err.value.message == "'1a' begins 2 job ids (job-1a2b, job-1a3c); type more of it."
