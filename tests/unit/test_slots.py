"""worker/slots.py and worker/decoding.py without a model: which slot's cache a prompt reuses, how a
slot's cache follows its decodes, and the token events a generation hands out."""

from __future__ import annotations

import asyncio

from shared.events import Token
from worker.decoding import Decoding, Generation, PreparedRequest
from worker.slots import MIN_SHARED_PREFIX, Slot, common_prefix, place_prompt
from worker.text_stream import TextStream


def decoding(**fields) -> Decoding:
    loop = asyncio.new_event_loop()
    try:
        done = loop.create_future()
    finally:
        loop.close()
    gen = Generation(PreparedRequest(prompt="x", **fields), "job-1", lambda event: None, done)
    return Decoding(gen, sampler=None, text=TextStream())


def busy(slot: Slot) -> Slot:
    slot.decoding = decoding()
    return slot


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_a_prompt_goes_to_the_free_slot_sharing_the_longest_prefix():
    slots = [Slot(0, cached=[1, 2, 9]), Slot(1, cached=[1, 2, 3, 4]), Slot(2)]
    placement = place_prompt(slots, [1, 2, 3, 4, 5, 6])
    assert placement.slot is slots[1] and placement.copy_from is None and placement.keep == 4


def test_among_equals_the_least_recently_used_slot_is_taken():
    slots = [Slot(0, last_used=5.0), Slot(1, last_used=1.0), Slot(2, last_used=3.0)]
    assert place_prompt(slots, [7, 8]).slot is slots[1]


def test_the_last_prompt_token_is_always_decoded_again():
    slots = [Slot(0, cached=[1, 2, 3])]
    assert place_prompt(slots, [1, 2, 3]).keep == 2  # its logits are what the first token is sampled from
    assert place_prompt(slots, [1, 2]).keep == 1


def test_busy_slots_are_never_taken():
    slots = [busy(Slot(0, cached=[1, 2, 3, 4])), Slot(1, cached=[9])]
    placement = place_prompt(slots, [1, 2, 3, 4, 5])
    assert placement.slot is slots[1] and placement.copy_from is None and placement.keep == 0


def test_a_clearly_longer_prefix_in_a_busy_slot_is_copied_into_the_stalest_free_one():
    system = list(range(100, 100 + MIN_SHARED_PREFIX))
    slots = [busy(Slot(0, cached=system + [1, 2])), Slot(1, cached=[5], last_used=9.0), Slot(2, last_used=2.0)]
    placement = place_prompt(slots, system + [3, 4])
    assert placement.slot is slots[2] and placement.copy_from is slots[0]
    assert placement.keep == MIN_SHARED_PREFIX


def test_a_short_shared_prefix_is_computed_again_rather_than_copied():
    system = list(range(100, 100 + MIN_SHARED_PREFIX - 1))
    slots = [busy(Slot(0, cached=system + [1])), Slot(1)]
    placement = place_prompt(slots, system + [3])
    assert placement.slot is slots[1] and placement.copy_from is None and placement.keep == 0


def test_a_slot_cache_follows_its_prompt_chunks_and_tokens():
    slot = Slot(0, cached=[1, 2, 3, 9])
    run = decoding()
    slot.begin([1, 2, 3, 4, 5, 6], 3, run)
    assert (slot.cached, slot.pending, slot.position, slot.decoding) == ([1, 2, 3], [4, 5, 6], 3, run)
    slot.decoded(2)
    assert (slot.cached, slot.pending) == ([1, 2, 3, 4, 5], [6])
    slot.decoded(1)
    slot.next_token = 42
    slot.decoded(0)
    assert (slot.cached, slot.pending, slot.next_token, slot.position) == ([1, 2, 3, 4, 5, 6, 42], [], None, 7)


def test_a_released_slot_keeps_what_it_decoded_and_is_free():
    slot = Slot(0)
    slot.begin([1, 2, 3, 4], 0, decoding())
    slot.decoded(2)  # cancelled mid-prompt
    slot.release()
    assert (slot.cached, slot.pending, slot.decoding) == ([1, 2], [], None)
    assert slot.last_used > 0


def test_token_events_carry_ids_only_with_all_of_their_text():
    run = decoding()
    run.ids_pending.append(1)
    assert run.add_text("Hel", with_ids=False) is True  # the first goes out at once
    run.ids_pending.append(2)
    assert run.add_text("lo", with_ids=True) is False
    assert run.add_text("", with_ids=True) is False  # no text, no event
    assert run.outbox == [Token(t="Hel", i=0), Token(t="lo", i=1, ids=(1, 2))]
    assert run.ids_pending == []
    stats = run.end_stats("stop", stop_sequence="\n")
    assert stats["text"] == "Hello" and stats["stop_sequence"] == "\n" and stats["prompt_tokens"] == 0


def test_token_events_carry_the_logprobs_of_the_tokens_they_cover():
    run = decoding(logprobs=1)
    run.logprobs_pending += [{"token": "a"}, {"token": "b"}]
    run.add_text("ab")
    assert run.outbox[0].logprobs == [{"token": "a"}, {"token": "b"}] and run.logprobs_pending == []
