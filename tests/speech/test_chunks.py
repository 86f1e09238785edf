"""speech/chunks.py: cutting decoded speech at its pauses, and joining the pieces' words back."""

from __future__ import annotations

import random

from speech import chunks
from tests.fakes import tone_words as tones


def _sentences(count: int, words: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    plain = [w for w in tones.WORDS if w not in ("slow", "crash")]
    return [[rng.choice(plain) for _ in range(words)] for _ in range(count)]


def test_short_audio_is_one_piece() -> None:
    pcm = tones.speak(_sentences(2, 6, seed=1))
    (only,) = chunks.split(pcm)
    assert only.pcm == pcm and only.start == 0 and not only.overlaps_previous


def test_long_speech_is_cut_in_its_pauses_and_every_word_is_whole() -> None:
    sentences = _sentences(12, 8, seed=2)
    pcm = tones.speak(sentences)
    pieces = chunks.split(pcm)
    assert len(pieces) >= 4
    assert pieces[0].end <= chunks.FIRST_MAX_SECONDS
    assert all(p.end - p.start <= chunks.MAX_SECONDS for p in pieces)
    assert all(b.start == a.end and not b.overlaps_previous for a, b in zip(pieces, pieces[1:]))
    assert b"".join(p.pcm for p in pieces) == pcm  # nothing lost, nothing doubled
    # Each piece holds whole sentences: the words of each piece are those of consecutive sentences.
    heard = [tones.hear(p.pcm) for p in pieces]
    said = [w for s in sentences for w in s]
    assert [w for h in heard for w in h] == said
    assert all(len(h) % 8 == 0 for h in heard)


def test_speech_without_a_pause_is_cut_with_overlap_and_joined_without_doubles() -> None:
    stretch = _sentences(1, 110, seed=3)[0]  # ~60 s with no pause
    pieces = chunks.split(tones.speak([stretch]))
    assert len(pieces) >= 3 and all(p.overlaps_previous for p in pieces[1:])
    assert all(b.start < a.end for a, b in zip(pieces, pieces[1:]))
    heard = [" ".join(tones.hear(p.pcm)) for p in pieces]
    assert chunks.join(heard, [p.overlaps_previous for p in pieces]) == " ".join(stretch)


def test_join_drops_only_the_words_both_pieces_heard() -> None:
    assert chunks.join(["the cat sat on", "sat on the mat"], [False, True]) == "the cat sat on the mat"
    # A word half under the cut, misheard by the first piece, whole in the second.
    assert chunks.join(["he was not an ill dis-", "not an ill disposed man"], [False, True]) == \
        "he was not an ill disposed man"
    assert chunks.join(["Hello there.", "hello there"], [False, False]) == "Hello there. hello there"
    assert chunks.join(["One, two.", "Two three"], [False, True]) == "One, two. three"
    assert chunks.join(["", "words"], [False, True]) == "words"

