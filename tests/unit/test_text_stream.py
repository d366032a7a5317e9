"""worker/text_stream.py without a model: token pieces (bytes) in, the text a client may see out."""

from __future__ import annotations

import pytest

from worker.text_stream import TextStream


def run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], str, TextStream]:
    """Each push's output, then finish()'s, and the stream."""
    stream = TextStream(stops)
    out = [stream.push(p) for p in pieces]
    return out, stream.finish(), stream


def test_plain_pieces_come_out_as_they_go_in():
    out, tail, stream = run([b"Hello", b",", b" world"])
    assert out == ["Hello", ",", " world"] and tail == ""
    assert stream.stopped_by is None


def test_empty_stream_and_empty_pieces():
    out, tail, stream = run([])
    assert (out, tail, stream.stopped_by, stream.settled) == ([], "", None, True)
    out, tail, _ = run([b"", b"a", b""])
    assert out == ["", "a", ""] and tail == ""


def test_a_character_split_across_tokens_waits_for_its_last_byte():
    euro = "€".encode()  # three bytes
    stream = TextStream()
    assert stream.push(b"1 " + euro[:1]) == "1 "
    assert not stream.settled  # half a character is waiting
    assert stream.push(euro[1:2]) == ""
    assert stream.push(euro[2:] + b"!") == "€!"
    assert stream.settled


def test_a_four_byte_character_one_byte_per_token():
    emoji = "🐝".encode()
    out, tail, _ = run([bytes([b]) for b in emoji])
    assert out == ["", "", "", "🐝"] and tail == ""


def test_a_half_character_left_at_the_end_becomes_a_replacement_character():
    out, tail, _ = run([b"ok", "é".encode()[:1]])
    assert out == ["ok", ""] and tail == "\ufffd"


def test_invalid_bytes_are_replaced_not_raised():
    out, tail, _ = run([b"a\xffb"])
    assert out == ["a\ufffdb"] and tail == ""


def test_a_stop_string_inside_one_piece_ends_the_text_before_it():
    out, tail, stream = run([b"one two", b" STOP three"], stops=("STOP",))
    assert "".join(out) + tail == "one two "
    assert stream.stopped_by == "STOP"


def test_a_stop_string_spanning_tokens_is_never_shown_in_part():
    stream = TextStream(["</end>"])
    assert stream.push(b"answer <") == "answer "  # "<" might begin the stop: held back
    assert not stream.settled
    assert stream.push(b"/en") == ""
    assert stream.push(b"d> more") == ""
    assert stream.stopped_by == "</end>"
    assert stream.finish() == ""
    assert stream.push(b"late") == ""  # nothing after a stop


def test_a_stop_string_at_the_very_start():
    out, tail, stream = run([b"\nUser:", b" hi"], stops=("\nUser:",))
    assert out == ["", ""] and tail == ""
    assert stream.stopped_by == "\nUser:"


def test_a_stop_string_split_over_characters_split_over_tokens():
    stop = "«fin»"
    data = ("x" + stop).encode()
    out, tail, stream = run([bytes([b]) for b in data], stops=(stop,))
    assert "".join(out) + tail == "x" and stream.stopped_by == stop


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop():
    stream = TextStream(["STOP"])
    assert stream.push(b"ST") == ""
    assert stream.push(b"ONE") == "STONE"
    assert stream.settled


def test_held_back_text_is_released_at_the_end():
    out, tail, stream = run([b"the end ST"], stops=("STOP",))
    assert out == ["the end "] and tail == "ST"
    assert stream.stopped_by is None


def test_a_possible_start_of_any_stop_is_held():
    stream = TextStream(["abc", "bcd"])
    assert stream.push(b"xxab") == "xx"  # "ab" may begin "abc"
    assert stream.push(b"z") == "abz"


def test_of_several_stops_the_earliest_in_the_text_wins():
    out, tail, stream = run([b"a B c A d"], stops=("A", "B"))
    assert "".join(out) + tail == "a " and stream.stopped_by == "B"


def test_of_stops_starting_at_the_same_place_the_first_given_wins():
    _, _, stream = run([b"xx END here"], stops=("END here", "END"))
    assert stream.stopped_by == "END here"
    _, _, stream = run([b"xx END here"], stops=("END", "END here"))
    assert stream.stopped_by == "END"


def test_empty_stop_strings_are_ignored():
    out, tail, stream = run([b"hello"], stops=("", "zz"))
    assert out == ["hello"] and tail == "" and stream.stopped_by is None


def test_bytes_after_a_stop_are_not_part_of_the_answer():
    half = "é".encode()[:1]
    out, tail, stream = run([b"done.", b"\n" + half], stops=("\n",))
    assert "".join(out) + tail == "done."  # no replacement character for the half one after the stop
    assert stream.stopped_by == "\n"


def test_finish_is_said_once():
    stream = TextStream(["STOP"])
    stream.push(b"S")
    assert stream.finish() == "S"
    assert stream.finish() == ""


@pytest.mark.parametrize("cut", range(1, 12))
def test_any_split_gives_the_same_text(cut):
    data = "añb€c STOP d".encode()
    out, tail, stream = run([data[:cut], data[cut:]], stops=("STOP",))
    assert "".join(out) + tail == "añb€c "
    assert stream.stopped_by == "STOP"
