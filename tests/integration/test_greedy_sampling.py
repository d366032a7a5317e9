"""At temperature 0 the worker takes the largest logit itself (worker/sampling.py greedy_alone), not
through llama.cpp's sampler chain: its answer must be token for token the one llama.cpp's own greedy
sampler gives (llama-cpp-python's generate, in this process, over the same prompt tokens)."""

from __future__ import annotations

import pytest

from shared.builtin_model import builtin_model_path
from shared.events import End, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.passages import PASSAGE
from tests.support.processes import start_worker
from worker.config import all_cores

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

PROMPTS = [PASSAGE[:120], "Once upon a time, a fox", "def fibonacci(n):\n"]


async def worker_ids(worker, prompt: str, max_tokens: int) -> list[int]:
    request = InferenceRequest(prompt=prompt, max_tokens=max_tokens, temperature=0)
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        job = await client.submit(request)
        events = [e async for e in client.stream(job.job_id)]
    assert isinstance(events[-1], End) and events[-1].state == "completed"
    return [i for e in events if isinstance(e, Token) and e.ids for i in e.ids]


async def test_temperature_0_is_llama_cpps_own_greedy_answer(tmp_path):
    import llama_cpp

    # the same kernels as the worker: flash attention on, as many threads
    llm = llama_cpp.Llama(str(builtin_model_path()), n_ctx=512, n_threads=all_cores(), flash_attn=True, verbose=False)
    worker = start_worker(tmp_path, "--ctx-size", "512", "--draft-max", "0", "--flash-attn", "on")
    try:
        for prompt in PROMPTS:
            ids = await worker_ids(worker, prompt, 24)
            expected = []
            for token in llm.generate(llm.tokenize(prompt.encode(), add_bos=True, special=True), temp=0.0,
                                      reset=True):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(expected) == 24:
                    break
                expected.append(token)
            assert len(ids) >= 16, ids  # the comparison covers a real answer
            assert ids == expected[:len(ids)], prompt
    finally:
        llm.close()
        assert worker.stop() == 0
