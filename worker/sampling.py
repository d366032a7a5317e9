"""`sampler_for(request)`: the llama.cpp sampler chain one generation samples with, as llama-cpp-python
builds it for the same parameters (so answers match it), behind the grammar and the penalties."""

from __future__ import annotations

import random
from typing import Any

from worker.decoding import PreparedRequest

MIN_P = 0.05  # llama-cpp-python's default, kept so answers match what it gives


def greedy_alone(request: PreparedRequest) -> bool:
    """Whether the request's chain is llama.cpp's greedy sampler and nothing else: then the engine takes the
    largest logit itself (numpy, about 8 us), not through llama_sampler_sample, which copies every logit of
    the vocabulary into a candidate list first (about 50 us here, once per token and per guessed position).
    Both take the first of equal largest logits."""
    return request.temperature == 0 and request.gbnf is None and not _penalized(request)


def _penalized(request: PreparedRequest) -> bool:
    return bool(request.presence_penalty or request.frequency_penalty)


def sampler_for(request: PreparedRequest, vocab: Any, n_ctx: int) -> Any:
    """A new chain (the caller frees it with llama_sampler_free). An answer moved here from another worker
    (`continue_ids`) has its grammar state and penalty counts go on from its tokens so far."""
    import llama_cpp

    first = []  # a sampler added here, or after greedy, must make greedy_alone false for its requests
    if request.gbnf is not None:  # first: what follows only ever sees tokens the grammar allows
        first.append(llama_cpp.llama_sampler_init_grammar(vocab, request.gbnf.encode(), b"root"))
    if _penalized(request):  # llama.cpp's order: penalties before top-k
        first.append(llama_cpp.llama_sampler_init_penalties(
            llama_cpp.llama_vocab_n_tokens(vocab), n_ctx, 1.0, request.frequency_penalty,
            request.presence_penalty))
    chain = _sampler_chain(request.temperature, request.top_k, request.top_p, request.seed, first=first)
    for token in (request.continue_ids or ()) if first else ():
        llama_cpp.llama_sampler_accept(chain, token)
    return chain


def _sampler_chain(temperature: float, top_k: int, top_p: float, seed: int | None, first: list[Any]) -> Any:
    """The chain after the samplers in `first`, which it takes over."""
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in first:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    if temperature == 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    for sampler in (llama_cpp.llama_sampler_init_top_k(top_k), llama_cpp.llama_sampler_init_top_p(top_p, 1),
                    llama_cpp.llama_sampler_init_min_p(MIN_P, 1), llama_cpp.llama_sampler_init_temp(temperature),
                    # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random": fold bigger seeds below it
                    llama_cpp.llama_sampler_init_dist(random.getrandbits(31) if seed is None
                                                      else seed % 0xFFFFFFFF)):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain
