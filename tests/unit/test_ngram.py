"""worker/ngram.py: guesses come from an earlier occurrence of the sequence's suffix, the longest first,
never from the suffix itself; a request whose guesses are rarely kept stops guessing."""

from __future__ import annotations

from worker.ngram import FIRST_LENGTH, MIN_TRIED, MISSES_TO_STOP, NgramDrafter


def test_a_repeated_passage_is_guessed_from_where_it_was_before():
    passage = [10, 11, 12, 13, 14, 15, 16]
    drafter = NgramDrafter(passage + [99, 10, 11])  # the answer starts repeating the prompt
    drafter.length = 8
    assert drafter.draft(4) == [12, 13, 14, 15]
    drafter.extend([12, 13])
    assert drafter.draft(8) == [14, 15, 16, 99, 10, 11, 12, 13]  # what followed then, as far as it goes


def test_guesses_start_short_grow_when_kept_and_shrink_when_missed():
    drafter = NgramDrafter(list(range(20)) + [0, 1])
    assert len(drafter.draft(16)) == FIRST_LENGTH
    drafter.judged(FIRST_LENGTH, FIRST_LENGTH)  # all kept: twice as long
    assert len(drafter.draft(16)) == 2 * FIRST_LENGTH
    drafter.judged(4, 3)  # mostly kept: as long
    assert len(drafter.draft(16)) == 2 * FIRST_LENGTH
    drafter.judged(4, 2)  # half kept, or less: half as long
    assert len(drafter.draft(16)) == FIRST_LENGTH


def test_nothing_is_guessed_without_an_earlier_occurrence():
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []
    assert NgramDrafter([7]).draft(4) == []
    assert NgramDrafter().draft(4) == []


def test_the_longest_matching_suffix_wins_and_the_latest_occurrence_of_it():
    # [5, 6] is followed by 1 first and by 2 later; [4, 5, 6] only by 3 (one token guessed here)
    drafter = NgramDrafter([4, 5, 6, 3, 0, 5, 6, 1, 0, 5, 6, 2, 0, 4, 5, 6])
    assert drafter.draft(1) == [3]
    drafter = NgramDrafter([5, 6, 1, 0, 5, 6, 2, 0, 9, 5, 6])
    assert drafter.draft(1) == [2]


def test_a_request_whose_guesses_are_rarely_kept_stops_guessing():
    drafter = NgramDrafter()
    drafter.judged(MIN_TRIED - 1, 0)
    assert drafter.worth_it  # too few to judge
    drafter.judged(1, 0)
    assert not drafter.worth_it
    half = NgramDrafter()  # half kept does not pay: each guessed position costs about half a token
    half.judged(MIN_TRIED * 2, MIN_TRIED)
    assert not half.worth_it
    most = NgramDrafter()
    most.judged(MIN_TRIED * 2, MIN_TRIED * 3 // 2)
    assert most.worth_it


def test_a_request_decodes_its_first_guess_at_once():
    drafter = NgramDrafter([10, 11, 12, 13, 14, 99, 10, 11])
    assert drafter.guess(8) == [12, 13]  # FIRST_LENGTH tokens


def test_after_a_miss_a_guess_is_decoded_only_once_one_proved_right_and_stops_after_misses():
    drafter = NgramDrafter([10, 11, 12, 13, 99, 10, 11])
    drafter.judged(2, 0)  # a first guess missed: back to guessing for free
    assert drafter.guess(8) == []  # not proved yet: [12, 13] only remembered
    drafter.add(12)
    assert drafter.guess(8) == []  # half of it came
    drafter.add(13)  # all of it came as guessed
    assert drafter.guess(8) == [99]  # decoded: as long as guesses are after the miss
    drafter.judged(2, 1)  # half kept, or less: back to guessing for free
    drafter.add(50)
    assert drafter.guess(8) == [] and not drafter.primed
    for _ in range(MISSES_TO_STOP):  # guesses in a row of which nothing is kept: no more guessing
        drafter.primed = True
        drafter.judged(1, 0)
    assert not drafter.worth_it


def test_guesses_grow_no_longer_than_the_longest_so_a_miss_shrinks_them():
    drafter = NgramDrafter(list(range(40)) + [0, 1], longest=8)
    for _ in range(6):  # kept whole again and again: 2, 4, 8, then 8 three more times
        drafter.judged(len(drafter.draft(64)), len(drafter.draft(64)))
    assert len(drafter.draft(64)) == 8
    drafter.judged(8, 2)  # mostly missed: half as long at once
    assert len(drafter.draft(64)) == 4
