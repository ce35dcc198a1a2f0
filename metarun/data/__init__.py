"""Where text comes from: every source returns a `Corpus` of (text, label, domain) rows."""

from metarun.data.clinc150 import load_clinc150
from metarun.data.corpus import Corpus
from metarun.data.files import load_local, load_texts
from metarun.data.synthetic import generate_synthetic

__all__ = ["Corpus", "generate_synthetic", "load_clinc150", "load_local", "load_texts"]
