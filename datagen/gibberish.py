"""Procedural nonsense words: pronounceable, syllable-built, reproducible from a seed.

Every possible word belongs to exactly one split, decided by a CRC32 of its lowercase form
(about 1 in HELD_OUT_MODULUS words is "heldout"). Training data only ever draws "train" words,
and held-out words also skip every token of the hand-written gibberish lists, so

    held_out_words(n, seed)

returns n words guaranteed absent from the echo training data whatever seeds built it: use them
to test true copying on words the model cannot have seen.
"""

from __future__ import annotations

import random
import re
import zlib

from datagen import content_echo

HELD_OUT_MODULUS = 5
SPLITS = ("train", "heldout")

_ONSETS = (
    "b",
    "bl",
    "br",
    "d",
    "dr",
    "f",
    "fl",
    "fr",
    "g",
    "gl",
    "gr",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "qu",
    "r",
    "s",
    "sn",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "i", "oo", "ee", "y")
_INNER_CODAS = ("", "", "", "n", "m", "r", "l", "x", "z")  # light: keeps words pronounceable
_FINAL_CODAS = ("", "", "b", "k", "n", "p", "x", "z", "nk", "rp", "sh", "mp", "nd", "rk", "x", "ng")
# German flavour: umlauts, diphthongs and German consonant clusters.
_ONSETS_DE = ("sch", "pf", "kn", "schw", "z", "w", "gr", "fl", "br", "kl", "m", "d", "t", "h", "l")
_VOWELS_DE = ("ä", "ö", "ü", "ä", "ö", "ü", "ei", "au", "ie", "a", "o", "u")
_INNER_CODAS_DE = ("", "", "", "n", "r", "l", "m")
_FINAL_CODAS_DE = ("", "ch", "tz", "ß", "nk", "rf", "lt", "x", "n", "m", "ck")

_TOKEN = re.compile(r"[^\W\d_]+")


def _reserved() -> frozenset[str]:
    """Lowercase letter runs of every hand-written gibberish item (never handed out as held-out)."""
    texts = (
        *content_echo.GIBBERISH_WORDS,
        *content_echo.GIBBERISH_SENTENCES,
        *content_echo.GIBBERISH_WORDS_DE,
        *content_echo.GIBBERISH_SENTENCES_DE,
    )
    return frozenset(token.lower() for text in texts for token in _TOKEN.findall(text))


RESERVED = _reserved()


def split_of(word: str) -> str:
    """Which split a word belongs to; depends on the word only, not on any seed."""
    return (
        "heldout" if zlib.crc32(word.lower().encode("utf-8")) % HELD_OUT_MODULUS == 0 else "train"
    )


def _word(rng: random.Random, german: bool) -> str:
    onsets, vowels = (_ONSETS_DE, _VOWELS_DE) if german else (_ONSETS, _VOWELS)
    inner, final = (_INNER_CODAS_DE, _FINAL_CODAS_DE) if german else (_INNER_CODAS, _FINAL_CODAS)
    n_syllables = rng.choice((2, 2, 3))
    syllables = []
    for k in range(n_syllables):
        # After an open syllable the next one needs an onset, else vowels pile up ("aoo").
        needs_onset = k == 0 or syllables[-1][-1:] not in "bcdfghjklmnpqrstvwxzß"
        onset = rng.choice(onsets) if needs_onset or rng.random() < 0.6 else ""
        coda = rng.choice(final if k == n_syllables - 1 else inner)
        syllables.append(onset + rng.choice(vowels) + coda)
    word = "".join(syllables)
    return word[:1].upper() + word[1:]


def nonsense_words(n: int, seed: int, *, german: bool = False, split: str = "train") -> list[str]:
    """n distinct capitalised nonsense words of `split`, the same list for the same arguments.

    `german=True` mixes in umlauts and German consonant clusters.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    for _ in range(1000 * n + 100):
        if len(words) == n:
            break
        word = _word(rng, german)
        key = word.lower()
        if key in seen or key in RESERVED or split_of(word) != split:
            continue
        seen.add(key)
        words.append(word)
    else:
        raise ValueError(f"could not find {n} distinct {split} words")
    return words


def held_out_words(n: int, seed: int = 0, *, german: bool = False) -> list[str]:
    """n nonsense words that no echo training data contains (for held-out copy evaluation)."""
    return nonsense_words(n, seed, german=german, split="heldout")


def nonsense_sentences(
    n: int, seed: int, *, german: bool = False, split: str = "train"
) -> list[str]:
    """n sentences of 3-5 nonsense words: first word capitalised, the rest lowercase, final `.`."""
    rng = random.Random(seed)
    lengths = [rng.randint(3, 5) for _ in range(n)]
    pool = nonsense_words(sum(lengths), seed, german=german, split=split)
    sentences, start = [], 0
    for length in lengths:
        words = pool[start : start + length]
        start += length
        sentences.append(" ".join([words[0], *(w.lower() for w in words[1:])]) + ".")
    return sentences
