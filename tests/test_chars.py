"""Tests of seqbucket_plugin.datapipes.chars and word_tokenizer (the tagging recipe's vocabularies)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from seqbucket_plugin.datapipes import CharIds, CharVocab, word_tokenizer


def test_char_vocab_counts_saves_and_loads(tmp_path):
    vocab = CharVocab.build([["ab", "b"], ["c"]], min_count=2)
    assert vocab.chars == ["b"] and len(vocab) == 3
    assert vocab.encode("abz", max_chars=2) == [1, 2] and vocab.encode("", max_chars=5) == [1]
    vocab.save(tmp_path / "chars.json")
    assert CharVocab.load(tmp_path / "chars.json").chars == ["b"]


def test_char_ids_adds_a_padded_tensor_and_drops_truncated_words():
    vocab = CharVocab(["a", "b", "c"])
    batch = SimpleNamespace(input_ids=torch.zeros(2, 3, dtype=torch.long), lengths=torch.tensor([3, 1]),
                            extras={"tokens": [["ab", "c", "abcabc"], ["b", "dropped"]]})
    out = CharIds(vocab, max_chars=4)(batch)
    ids = out.extras["char_ids"]
    assert "tokens" not in out.extras and ids.dtype == torch.int64 and ids.shape == (2, 3, 4)
    assert ids[0, 0].tolist() == [2, 3, 0, 0] and ids[0, 2].tolist() == [2, 3, 4, 2]
    assert ids[1, 0].tolist() == [3, 0, 0, 0] and ids[1, 1:].abs().sum() == 0


def test_word_tokenizer_keeps_whole_words_by_frequency():
    tok = word_tokenizer([["The", "cat", "sat."], ["the", "dog"]], min_frequency=1, vocab_size=4)
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == ("<pad>", "<unk>", None, None)
    assert tok.get_vocab() == {"<pad>": 0, "<unk>": 1, "the": 2, "cat": 3}
    assert tok.encode("the sat. cat") == [2, 1, 3]
