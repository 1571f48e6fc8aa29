"""Token texts and answer tokens under the two ways tokenizers mark a word's leading space.

Byte-level BPE (SmolLM2, GPT-2, Llama 3, Qwen) keeps the space in the token's text. A
SentencePiece tokenizer of the Llama 2 kind (also Mistral, Phi-3) prepends a space to the text
it encodes and strips the leading space of the first token it decodes. Read naively, "▁New"
decoded alone is "New" (a token that glues onto the word before it), and " Paris" encoded alone
is "▁" + "▁Paris". The SentencePiece tokenizer here is built with the ``tokenizers`` library
(nothing is downloaded); the byte-level one is the embedded model's.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from recall.core.lm import (
    answer_tokens,
    join_continuation,
    name_start_mask,
    spaced_first_tokens,
    vocab_texts,
    word_glue_mask,
)

PIECES = ["<unk>", "▁", "a", "▁New", "▁York", "▁born", "▁in", "New", "ork", "▁a", ".", "▁Paris", "Paris", "▁is"]


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    # a unigram model segments like SentencePiece: the fewest, longest pieces
    tk = Tokenizer(models.Unigram([(p, -1.0) for p in PIECES], unk_id=0))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def test_token_texts_keep_the_leading_space_a_sentencepiece_decoder_strips(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    assert tok.decode([PIECES.index("▁New")]) == "New"  # the trap: decoded alone, the space is gone
    texts = vocab_texts(tok)
    new, glued = PIECES.index("▁New"), PIECES.index("ork")
    assert texts[new] == " New" and texts[glued] == "ork"
    glue, names = word_glue_mask(texts), name_start_mask(texts)
    assert not glue[new] and glue[glued]  # "▁New" starts a word; "ork" continues one
    assert names[new] and not names[PIECES.index("New")]


def test_an_answer_after_a_prompt_has_no_stray_space_token(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    ids = lambda *pieces: [PIECES.index(p) for p in pieces]  # noqa: E731
    assert tok(" Paris", add_special_tokens=False).input_ids == ids("▁", "▁Paris")  # the trap
    assert answer_tokens(tok, "born in", "Paris") == ids("▁Paris")
    assert answer_tokens(tok, "", " New York") == ids("▁New", "▁York")
    assert answer_tokens(tok, "born in ", "Paris") == ids("▁Paris")  # no seam space: encoded as it is
    # the words of a question, as the answer slot reads them (Injector.slot_names)
    assert spaced_first_tokens(tok, ["New", "Paris"]) == set(ids("▁New", "▁Paris"))


def test_weight_editors_read_targets_without_a_stray_space_token(sentencepiece_tokenizer):
    """ROME/MEMIT/AlphaEdit (rewriting and essence rows), FT-L and GRACE train on the target's
    tokens as they follow the prompt; a stray "▁" first would teach the model to write a space."""
    from recall.core.requests import EditRequest
    from recall.methods.edit_requests import kl_row, prompt_row
    from recall.methods.ft_l import _target_batch

    tok = sentencepiece_tokenizer
    ids = lambda *pieces: [PIECES.index(p) for p in pieces]  # noqa: E731
    req = EditRequest("New York born in", "New York", "Paris")
    row = prompt_row(tok, "", req, 0, with_target=True)
    assert row.target_ids == ids("▁Paris") and row.ids == ids("▁New", "▁York", "▁born", "▁in")
    assert kl_row(tok, req, 0).ids == ids("▁New", "▁York", "▁is", "▁a")
    batch, labels = _target_batch(tok, req.prompt, req.target, "cpu")
    assert batch[0].tolist() == ids("▁New", "▁York", "▁born", "▁in", "▁Paris")
    assert labels[0].tolist() == [-100] * 4 + ids("▁Paris")


def test_byte_level_tokens_are_read_as_before(loaded_model):
    """The embedded tokenizer: the same texts and answer tokens as decoding and encoding alone."""
    tok = loaded_model[1]
    texts = vocab_texts(tok)
    assert texts == [tok.decode([i]) for i in range(len(tok))]
    for prompt, answer in [("born in", "Bangalore"), ("", " Satya Nadella"), ("x ", "1947"), ("x", " MAT-49")]:
        expected = tok(join_continuation(prompt, answer), add_special_tokens=False).input_ids
        assert answer_tokens(tok, prompt, answer) == expected
    words = ["Nadella", "Bangalore", "1947", "I", "What's"]
    assert spaced_first_tokens(tok, words) == {tok(" " + w, add_special_tokens=False).input_ids[0] for w in words}
