"""worker/sampling.py: which requests the engine samples greedily by itself (the largest logit), and which
go through llama.cpp's sampler chain."""

from __future__ import annotations

import pytest

from worker.decoding import PreparedRequest
from worker.sampling import greedy_alone


def test_temperature_0_alone_is_greedy():
    assert greedy_alone(PreparedRequest(prompt="x", temperature=0))


@pytest.mark.parametrize("fields", [{"temperature": 0.7}, {"temperature": 0, "gbnf": 'root ::= "a"'},
                                    {"temperature": 0, "presence_penalty": 0.5},
                                    {"temperature": 0, "frequency_penalty": 0.5}],
                         ids=["temperature", "grammar", "presence-penalty", "frequency-penalty"])
def test_anything_else_goes_through_the_chain(fields):
    assert not greedy_alone(PreparedRequest(prompt="x", **fields))
