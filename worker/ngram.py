"""Draft tokens by n-gram lookup (prompt lookup decoding): when the last few tokens of a sequence appeared
before in it (its prompt or its answer so far), guess that what followed them then follows again. Free to
compute, and right often when an answer repeats its prompt (edit this passage, fix this code, quote
that) or itself.

The engine (worker/engine.py) decodes a slot's guesses in the same batch as its next token, samples each
position with the request's own sampler and keeps the guesses up to the first that differs from what was
sampled: every token is still drawn from the model's distribution given the tokens before it (the guesses
only decide how many positions one decode gives), so the text is what it would be without guessing, at
any temperature. A guess costs a little even when it is wrong (one more position in the batch), so a
guess is only decoded after the last one proved right: a guess not decoded is still compared with the
token that comes (free), and one that matches lets the next be decoded; one decoded and missed at once
goes back to guessing for free. A request guesses few tokens at first, twice as many after a guess kept
whole, half as many after one missed at once, and stops guessing when its guesses are rarely right
(`NgramDrafter.worth_it`).
"""

from __future__ import annotations

from collections.abc import Sequence

NGRAM_MAX = 4  # the longest suffix looked up (a longer match predicts better)
NGRAM_MIN = 2  # the shortest: one token alone matches too much by chance
MIN_TRIED = 24  # guesses before a request's acceptance is judged
MIN_ACCEPTANCE = 0.3  # below this share of guesses kept, a request stops guessing
FIRST_LENGTH = 2  # tokens guessed at first


class NgramDrafter:
    """One sequence's tokens and, per n-gram size, where each n-gram last ended (the position after it)."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.tokens: list[int] = []
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        self.tried = 0  # guesses decoded
        self.kept = 0  # guesses that matched what was sampled
        self.length = FIRST_LENGTH  # tokens the next guess may have
        self.primed = False  # the last guess was right: the next is worth decoding
        self._expected: int | None = None  # the first token of a guess not decoded, to compare with what comes
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        """Append a token; index the n-grams that end just before it (the sequence's own current suffix is
        never indexed until a token follows it, so a lookup finds an earlier occurrence only)."""
        if self._expected is not None:
            self.primed, self._expected = token == self._expected, None
        tokens, at = self.tokens, len(self.tokens)
        for n, ends in self._ends.items():
            if at >= n:
                ends[tuple(tokens[at - n:at])] = at
        tokens.append(token)

    def draft(self, most: int) -> list[int]:
        """Up to `most` tokens (and the current guess length) that followed the longest suffix's latest
        earlier occurrence ([] if none)."""
        tokens, most = self.tokens, min(most, self.length)
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(tokens) <= n:
                continue
            at = self._ends[n].get(tuple(tokens[-n:]))
            if at is not None:
                return tokens[at:at + most]
        return []

    def guess(self, most: int) -> list[int]:
        """The tokens to decode as a guess now (`draft`), or [] while guessing has not proved right lately
        (the guess is then only remembered, to be compared with the token that comes) or does not pay."""
        if not self.worth_it:
            return []
        drafted = self.draft(most)
        if not self.primed:
            self._expected = drafted[0] if drafted else None
            return []
        return drafted

    def judged(self, tried: int, kept: int) -> None:
        self.tried += tried
        self.kept += kept
        self.primed = kept > 0
        if kept == tried:
            self.length *= 2
        elif kept == 0:
            self.length = max(1, self.length // 2)

    @property
    def worth_it(self) -> bool:
        """Whether guessing still pays for this request (its guesses are kept often enough)."""
        return self.tried < MIN_TRIED or self.kept >= MIN_ACCEPTANCE * self.tried
