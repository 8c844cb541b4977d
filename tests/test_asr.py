"""The storyteller's hearing, measured: a labelled set spoken by espeak-ng in five voices with
level changes and noise (sox), through the real host storyteller (duo_builder/bench/asr.py,
`invoke bench --asr` runs all of it). Floors a little below what was measured keep
recognition from slipping back: requests understood, other speech refused, false stops."""

import pytest

from duo_builder.bench import asr

# Every third utterance of the set: each voice, requests and other speech, a noise clip
SUBSET_STEP = 3


@pytest.fixture(scope="module")
def scores(storyteller):
    utterances = asr.labelled_set()[::SUBSET_STEP]
    return asr.score(asr.hear_all(utterances, storyteller=storyteller))


def test_the_labelled_set_is_what_the_issue_asks_for():
    utterances = asr.labelled_set()
    voices = {u.group for u in utterances} - {"noise"}
    assert len(utterances) >= 80 and len(voices) >= 5
    assert len(asr.OUT_OF_GRAMMAR) >= 25 and asr.NOISE_CLIPS
    assert {u.level_db for u in utterances} >= set(asr.LEVELS_DB)
    things, names = asr._subject_words()
    for text in asr.REQUESTS:  # the bench's idea of a request is the storyteller's
        assert asr.meaning(text, things, names) is not None, text
    assert not set(asr.OUT_OF_GRAMMAR) & set(asr.REQUESTS)


def test_requests_are_understood(scores):
    total = scores["total"]
    print("\n" + asr.format_table(scores))
    # measured on this subset: 94.5 % (full set: 95.8 %)
    assert total.understood / total.requests >= 0.92


def test_other_speech_is_refused(scores):
    total = scores["total"]
    assert total.refused / total.others >= 0.96  # measured on this subset: 100 % (full: 94.8 %)


def test_no_false_stops(scores):
    assert scores["total"].false_stops == 0  # measured 0 (full set: 0 in 320)
