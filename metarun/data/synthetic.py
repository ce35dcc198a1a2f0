"""Embedded synthetic text: deterministic, instant, offline, and only solvable from K shots by a learner.

Each class is a combination of made-up cue words drawn from one shared pool, so every word serves several
classes and no word means one class; an utterance mixes its class's cues into plentiful English filler and a
word of its domain's style. Filler dominates, so a model must first learn which words carry the label and how
to compare them before a few examples are enough: exactly what meta-training should teach.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List

from metarun.data.corpus import Corpus, DataConfig
from metarun.errors import UserError
from metarun.schema import schema, setting

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
FILLER = (
    "the a an i you we it this that my your our please can could would will should do does did is are was "
    "be been have has had get got want need like know tell show give find make let me us them there here "
    "now today tomorrow soon later again also just really very quite some any more most all every what "
    "when where which who how why if then so and or but with for from about into onto over under after "
    "before during while thanks okay hello hey right well maybe sure yes no not"
).split()
STYLES = ("formal", "casual", "terse", "chatty", "polite", "urgent", "curious", "tired", "excited", "plain")


@schema("data", "synthetic")
@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = "metarun.data.generate_synthetic"
    seed: int = 0
    n_domains: int = setting(10, least=1)
    classes_per_domain: int = setting(12, least=1)
    examples_per_class: int = setting(40, least=1)
    # own: each domain has its own classes | shared: one label set, domain-specific cue words
    label_sets: str = setting("own", choices=("own", "shared"))
    cue_vocab: int = setting(200, least=1)  # made-up cue words shared by all classes
    cues_per_class: int = setting(3, least=1)
    cues_per_text: int = setting(3, least=1)
    filler_range: List[int] = setting(factory=lambda: [10, 16])  # English filler words per text
    filler_vocab: int = setting(60, least=1)


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    """Distinct made-up words of two or three syllables, like 'kavo' or 'ribetu'."""
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3)))))
    return sorted(words)


def generate_synthetic(
    seed: int = 0,
    n_domains: int = 10,
    classes_per_domain: int = 12,
    examples_per_class: int = 40,
    label_sets: str = "own",
    cue_vocab: int = 200,
    cues_per_class: int = 3,
    cues_per_text: int = 3,
    filler_range: tuple[int, int] = (10, 16),
    filler_vocab: int = 60,
) -> Corpus:
    """Generate a corpus; `label_sets="own"` gives each domain its own classes, `"shared"` one label set
    whose cue words differ by domain (like sentiment across product categories)."""
    if cues_per_class > cue_vocab:
        raise UserError(f"data.cues_per_class={cues_per_class} exceeds data.cue_vocab={cue_vocab}; lower it.")
    if not 1 <= filler_vocab <= len(FILLER):
        raise UserError(f"data.filler_vocab={filler_vocab} is not valid; use 1 to {len(FILLER)}.")
    rng = random.Random(seed)
    filler = FILLER[:filler_vocab]
    words = _pseudo_words(rng, cue_vocab + n_domains * 3 + classes_per_domain)
    rng.shuffle(words)
    cue_pool, style_words = words[:cue_vocab], words[cue_vocab : cue_vocab + 3 * n_domains]
    # in shared label sets one cue per label is universal across domains; the rest are domain-specific
    universal = words[cue_vocab + 3 * n_domains :]
    texts, labels, domains = [], [], []
    for d in range(n_domains):
        domain = f"domain_{d:02d}"
        styles = style_words[3 * d : 3 * d + 3]
        for c in range(classes_per_domain):
            cues = rng.sample(cue_pool, cues_per_class)
            if label_sets == "shared":
                cues[0] = universal[c]
                label = f"label_{c:02d}"
            else:
                label = f"{STYLES[d % len(STYLES)]}_{d:02d}_{c:02d}"
            for _ in range(examples_per_class):
                words = rng.choices(cues, k=cues_per_text) + [rng.choice(styles)]
                words += rng.choices(filler, k=rng.randint(*filler_range))
                rng.shuffle(words)
                texts.append(" ".join(words))
                labels.append(label)
                domains.append(domain)
    return Corpus(texts, labels, domains, source=f"data=synthetic(seed={seed})")
