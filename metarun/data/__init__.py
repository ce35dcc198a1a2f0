"""Where text comes from: a `Corpus` of (text, label, domain) rows, or `Ratings` of items by users."""

from metarun.data.clinc150 import load_clinc150
from metarun.data.corpus import Corpus
from metarun.data.files import load_local, load_texts
from metarun.data.ratings import Ratings, load_ratings
from metarun.data.synthetic import generate_synthetic

__all__ = ["Corpus", "Ratings", "generate_synthetic", "load_clinc150", "load_local", "load_ratings", "load_texts"]
