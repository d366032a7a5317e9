"""Cache-aware routing (queen/prefix_index.py, WorkerRegistry.with_free_slot): the queen sends a prompt to
the worker expected to hold the longest part of it in a slot's KV cache, unless that worker is too much
busier than the least loaded one; what the worker reports it reused corrects the index."""

from __future__ import annotations

from queen.inference import remember_cache
from queen.prefix_index import PrefixIndex, RouteGuard, shared_chunks
from queen.worker_registry import WorkerRegistry
from shared.operations import Infer
from shared.prefix_chain import CHUNK_CHARS, chain, serialize, with_answer

SYSTEM = ("system", "You are a careful assistant who answers in full sentences. " * 8)
TURN1 = (SYSTEM, ("user", "Tell me about the history of the bicycle, from the draisine onwards. " * 3))
ANSWER1 = "The bicycle began in 1817 with Karl Drais's running machine, which had no pedals at all. " * 3
TURN2 = (*TURN1, ("assistant", ANSWER1), ("user", "And who added the pedals?"))


def test_the_next_turn_of_a_chat_starts_with_the_last_turn_and_its_answer():
    held = chain(with_answer(None, TURN1, ANSWER1))
    asked = chain(serialize(None, TURN2))
    assert len(held) > 10 and shared_chunks(held, asked) == len(held)  # every chunk of it
    other = chain(serialize(None, (SYSTEM, ("user", "Something else entirely, about trains. " * 5))))
    assert 0 < shared_chunks(other, asked) < len(held)  # the system prompt only


def test_a_chain_names_whole_prefixes_a_change_early_on_changes_every_later_hash():
    text = "a" * 10 * CHUNK_CHARS
    changed = "b" + text[1:]
    assert len(chain(text)) == 10 and shared_chunks(chain(text), chain(changed)) == 0
    assert chain(text[: 3 * CHUNK_CHARS + 5]) == chain(text)[:3]  # only whole chunks count
    assert serialize("hi", None) != serialize(None, (("user", "hi"),))  # a raw prompt is not a chat


def test_the_index_holds_one_chain_per_slot_the_extended_one_replaced_the_oldest_evicted():
    index = PrefixIndex(capacity=2)
    first, second, third = (chain(serialize(None, (("user", f"{n} " + "x" * 300),))) for n in "abc")
    index.record(first)
    index.record(second)
    longer = first + (123,)
    index.record(longer)  # the same conversation's next turn takes its slot, not a new one
    assert index.chains == [second, longer]
    index.record(third)  # a third conversation evicts the least recently used
    assert index.chains == [longer, third] and index.held(second) == 0


def test_a_worker_that_reused_less_than_expected_is_believed():
    index = PrefixIndex(capacity=4)
    asked = chain(serialize(None, TURN2))
    index.record(chain(with_answer(None, TURN1, ANSWER1)))
    assert index.held(asked) > 10
    index.correct(asked, reused_tokens=index.tokens(index.held(asked)))  # as expected: kept
    assert index.held(asked) > 10
    index.correct(asked, reused_tokens=0)  # its slot was taken since: that chain is gone
    assert index.held(asked) == 0


def test_characters_per_token_are_learned_from_reports():
    index = PrefixIndex()
    for _ in range(30):
        index.learn(3000, 1000)
    assert abs(index.chars_per_token - 3.0) < 0.01 and index.tokens(3) in (63, 64)  # 192 characters


def registry(*workers: tuple[str, int]) -> WorkerRegistry:
    reg = WorkerRegistry(heartbeat_timeout_s=15)
    for worker_id, busy in workers:
        w = reg.add(worker_id, "localhost", f"http://{worker_id}", "m", slots=8)
        for n in range(busy):
            reg.lease(w, f"job-{worker_id}-{n}")
    return reg


def test_the_prompt_goes_to_the_worker_holding_its_cache():
    reg = registry(("w1", 0), ("w2", 0))
    asked = chain(serialize(None, TURN2))
    reg.get("w2").prefixes.record(chain(with_answer(None, TURN1, ANSWER1)))
    guard = RouteGuard()
    assert reg.with_free_slot("m", None, prefix=asked, guard=guard).worker_id == "w2"
    reg.lease(reg.get("w2"), "job-a")  # one busier is no reason to pay the whole prefill elsewhere
    assert reg.with_free_slot("m", None, prefix=asked, guard=guard).worker_id == "w2"
    assert reg.with_free_slot("m", None, prefix=asked, guard=None).worker_id == "w1"  # routing off: load alone


def test_the_load_guard_sends_it_to_the_least_loaded_when_the_cached_worker_is_much_busier():
    reg = registry(("w1", 1), ("w2", 5))
    asked = chain(serialize(None, TURN2))
    reg.get("w2").prefixes.record(chain(with_answer(None, TURN1, ANSWER1)))
    assert reg.with_free_slot("m", None, prefix=asked, guard=RouteGuard(abs_slots=2, rel=1.5)).worker_id == "w1"
    assert reg.with_free_slot("m", None, prefix=asked, guard=RouteGuard(abs_slots=4, rel=1.5)).worker_id == "w2"


def test_a_short_shared_prefix_is_not_worth_routing_for():
    reg = registry(("w1", 0), ("w2", 1))
    short = chain(serialize(None, (("user", "y" * CHUNK_CHARS * 2),)))  # 2 chunks: ~32 tokens at 4 chars
    reg.get("w2").prefixes.record(short[:1])
    assert reg.with_free_slot("m", None, prefix=short, guard=RouteGuard()).worker_id == "w1"


def test_after_an_answer_the_worker_is_known_to_hold_the_conversation_so_far():
    reg = registry(("w1", 0))
    worker = reg.get("w1")
    op = Infer(messages=TURN1, max_tokens=8)
    text = serialize(None, TURN1)
    remember_cache(worker, op, text, chain(text), {"text": ANSWER1, "prompt_tokens": len(text) // 4,
                                                   "prompt_tokens_reused": 0})
    assert worker.prefixes.capacity == 8
    asked = chain(serialize(None, TURN2))
    assert worker.prefixes.held(asked) == len(chain(with_answer(None, TURN1, ANSWER1)))
