"""Draft tokens by n-gram lookup (prompt lookup decoding): when the last few tokens of a sequence appeared
before in it (its prompt or its answer so far), guess that what followed them then follows again. Free to
compute, and right often when an answer repeats its prompt (edit this passage, fix this code, quote
that) or itself.

The engine (worker/engine.py) decodes a slot's guesses in the same batch as its next token, samples each
position with the request's own sampler and keeps the guesses up to the first that differs from what was
sampled: every token is still drawn from the model's distribution given the tokens before it (the guesses
only decide how many positions one decode gives), so the text is what it would be without guessing, at
any temperature. A guess costs a little even when it is wrong (one more position in the batch), so after
one of which half or less was kept, a guess is only decoded once one proved right again: a guess not
decoded is still compared with the tokens that come (free), and one whose first PROOF tokens came as
guessed lets the next be decoded. A request's first guess is decoded at once (one short guess costs
little, and an answer that copies its prompt starts copying with its first tokens). A request guesses
few tokens at first, twice as many after a guess kept whole (never more than the worker's --draft-max,
so that one miss halves them), half as many after one of which half or less is kept, and stops guessing
when too few of its guesses are kept (`NgramDrafter.worth_it`).
"""

from __future__ import annotations

from collections.abc import Sequence

NGRAM_MAX = 4  # the longest suffix looked up (a longer match predicts better)
NGRAM_MIN = 2  # the shortest: one token alone matches too much by chance
MIN_TRIED = 16  # guesses before a request's acceptance is judged
MISSES_TO_STOP = 3  # guesses in a row of which nothing is kept, and a request stops guessing
PROOF = 2  # tokens of a guess not decoded that must come as guessed before guesses are decoded
# Below this share of guesses kept, a request stops guessing. On the CPU each guessed position in a batch
# costs about half a token's decode (the built-in model, 2 cores: 1 stream 6.8 ms a token, 8 streams 30.5 ms
# a step), so guesses pay only when more than half of them are kept; measured on counting (about half
# kept): 0.89 of the speed without guessing when it went on at 30 %.
MIN_ACCEPTANCE = 0.6
FIRST_LENGTH = 2  # tokens guessed at first


class NgramDrafter:
    """One sequence's tokens and, per n-gram size, where each n-gram last ended (the position after it)."""

    def __init__(self, tokens: Sequence[int] = (), longest: int = 8) -> None:
        self.tokens: list[int] = []
        self.longest = longest  # the most tokens a guess may have (the worker's --draft-max)
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        self.tried = 0  # guesses decoded
        self.kept = 0  # guesses that matched what was sampled
        self.length = min(FIRST_LENGTH, longest)  # tokens the next guess may have
        self.primed = True  # the next guess is worth decoding: at first, and while the last was right
        self.misses = 0  # guesses in a row of which nothing was kept
        self._expected: list[int] = []  # a guess not decoded, its tokens still to come as guessed
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        """Append a token; index the n-grams that end just before it (the sequence's own current suffix is
        never indexed until a token follows it, so a lookup finds an earlier occurrence only)."""
        if self._expected:
            if token != self._expected.pop(0):
                self._expected = []
            elif not self._expected:  # it all came as guessed
                self.primed = True
        tokens, at = self.tokens, len(self.tokens)
        for n, ends in self._ends.items():
            if at >= n:
                ends[tuple(tokens[at - n:at])] = at
        tokens.append(token)

    def draft(self, most: int) -> list[int]:
        """Up to `most` tokens (and the current guess length) that followed the longest suffix's latest
        earlier occurrence ([] if none)."""
        return self._lookup(min(most, self.length))

    def _lookup(self, most: int) -> list[int]:
        tokens = self.tokens
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(tokens) <= n:
                continue
            at = self._ends[n].get(tuple(tokens[-n:]))
            if at is not None:
                return tokens[at:at + most]
        return []

    def guess(self, most: int) -> list[int]:
        """The tokens to decode as a guess now (`draft`), or [] while guessing has not proved right lately
        (a guess is then only remembered, to be compared with the tokens that come) or does not pay."""
        if not self.worth_it:
            return []
        if self.primed:
            return self.draft(most)
        if not self._expected:
            self._expected = self._lookup(PROOF)
        return []

    def judged(self, tried: int, kept: int) -> None:
        self.tried += tried
        self.kept += kept
        self.primed = 2 * kept > tried  # more than half kept: the next guess is worth decoding
        self.misses = 0 if kept else self.misses + 1
        if kept == tried:
            self.length = min(self.length * 2, self.longest)
        elif 2 * kept <= tried:
            self.length = max(1, self.length // 2)

    @property
    def worth_it(self) -> bool:
        """Whether guessing still pays for this request (its guesses are kept often enough)."""
        if self.misses >= MISSES_TO_STOP:
            return False
        return self.tried < MIN_TRIED or self.kept >= MIN_ACCEPTANCE * self.tried
