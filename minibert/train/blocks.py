"""A corpus as continued MLM pretraining reads it: the held-out documents split off (split_documents,
widen_held_out), every document tokenized and the concatenation cut into blocks (group_texts, as run_mlm.py's
group_texts), each batch masked as transformers' collators mask it (mask_tokens).

Axes: N blocks, B batch, T tokens.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..kernels.reference import IGNORE_INDEX


@dataclass
class Blocks:
    """A corpus as run_mlm.py's group_texts makes it: every document tokenized with its special tokens, all of
    them concatenated, cut into blocks of block_size tokens (the tail shorter than a block dropped)."""
    ids: np.ndarray         # [N, block_size] int64
    special: np.ndarray     # [N, block_size] bool: tokens the tokenizer added ([CLS], [SEP], <s>, ...)
    words: np.ndarray       # [N, block_size] int64: a word number unique in the corpus, -1 for special tokens


def check_block_size(tokenizer, block_size):
    if not isinstance(block_size, int) or isinstance(block_size, bool) or not 2 <= block_size <= tokenizer.max_length:
        raise InputError(f"max_length (the block size) must be an int from 2 to the model's {tokenizer.max_length} "
                         f"positions, found {block_size!r}")


def group_texts(tokenizer, texts, block_size, what="the corpus",
                advice="give more text or a smaller max_length (--max-length)") -> Blocks:
    """Tokenize texts (each with its special tokens, no truncation) and cut the concatenation into blocks;
    fewer tokens than one block is an InputError saying `what` is too short and `advice`."""
    check_block_size(tokenizer, block_size)
    from ..tokenizer import as_text_list, encode_batch
    texts = as_text_list(texts, "texts")
    ids, special, words, next_word = [], [], [], 0
    for start in range(0, len(texts), 1024):
        # Not tokenizer(): a document longer than the model's positions is normal here, the blocks cut it.
        for e in encode_batch(tokenizer.backend, texts[start:start + 1024], None):
            word = np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
            ids.append(np.array(e.ids, dtype=np.int64))
            special.append(np.array([s is None for s in e.sequence_ids], dtype=bool))
            words.append(np.where(word >= 0, word + next_word, -1))
            next_word += int(word.max(initial=-1)) + 1
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    usable = len(flat) // block_size * block_size
    if usable == 0:
        raise InputError(f"{what} holds {len(flat)} tokens, fewer than one block of {block_size}; {advice}")
    def blocks(parts):
        return np.concatenate(parts)[:usable].reshape(-1, block_size)
    return Blocks(ids=blocks(ids).astype(np.int64), special=blocks(special), words=blocks(words).astype(np.int64))


def mask_tokens(ids, special, rng, *, mask_id, vocab_size, mlm_probability=0.15, words=None):
    """(inputs, labels) as transformers' DataCollatorForLanguageModeling masks a batch: each token that is not
    special is chosen with probability mlm_probability (labels: its id; -100 for the others), and of the chosen
    80% become the mask token, 10% a random id, 10% stay. words ([B, T] word numbers): whole-word masking as
    DataCollatorForWholeWordMask: per row, words in random order are chosen whole until about
    mlm_probability of the row's tokens are, a word that would overshoot skipped; then 80/10/10 per token."""
    ids = np.asarray(ids)
    if words is None:
        chosen = (rng.random(ids.shape) < mlm_probability) & ~special                    # [B, T]
    else:
        chosen = np.zeros(ids.shape, dtype=bool)
        for b in range(ids.shape[0]):
            row_words = words[b][~special[b]]
            order = rng.permutation(np.unique(row_words))
            target = max(1, int(round(len(row_words) * mlm_probability)))
            covered = 0
            for word in order:
                pieces = (words[b] == word) & ~special[b]
                count = int(pieces.sum())
                if covered + count > target:
                    continue
                chosen[b] |= pieces
                covered += count
                if covered >= target:
                    break
    labels = np.where(chosen, ids, IGNORE_INDEX)                                         # [B, T]
    replaced = chosen & (rng.random(ids.shape) < 0.8)                                    # [B, T]
    randomized = chosen & ~replaced & (rng.random(ids.shape) < 0.5)                      # [B, T]
    inputs = np.where(replaced, mask_id, ids)
    inputs = np.where(randomized, rng.integers(0, vocab_size, ids.shape), inputs)
    return inputs.astype(np.int64), labels.astype(np.int64)


# What a user can do about held-out text, in Python and on the command line alike.
HOLD_OUT_ADVICE = ("held-out text (dev_texts=, --dev FILE), or hold none out (validation_split=0, "
                   "--validation-split 0)")


def split_documents(texts, dev_texts, share):
    """(train texts, held-out texts): dev_texts when given, else the first `share` of the documents. A str is
    one document, as everywhere else."""
    from ..tokenizer import as_text_list
    texts = as_text_list(texts, "texts")
    if dev_texts is not None:
        dev_texts = as_text_list(dev_texts, "dev_texts")
        if not any(text.strip() for text in dev_texts):     # held-out evaluation silently off is no evaluation
            raise InputError("dev_texts (--dev) holds no text: give held-out documents, or leave it out to hold out "
                             "the first documents of the corpus (validation_split)")
        return texts, dev_texts
    held = int(np.ceil(share * len(texts))) if share else 0
    if share and (held == 0 or held >= len(texts)):
        raise InputError(f"the corpus has {len(texts)} document(s): too few to hold out {share:.0%} of them for "
                         f"the perplexity report; give more documents, {HOLD_OUT_ADVICE}")
    return texts[held:], texts[:held]


def widen_held_out(tokenizer, texts, held, block_size):
    """(train texts, held-out texts) with the automatic held-out part (the first `held` documents) widened one
    document at a time until it holds at least one block: 5% of many short documents can be fewer tokens than
    a block, which would leave no held-out loss at all. InputError when the held-out block would take every
    document."""
    from ..tokenizer import encode_batch
    tokens, taken = 0, 0
    for start in range(0, len(texts), 256):
        for e in encode_batch(tokenizer.backend, texts[start:start + 256], None):
            if tokens >= block_size:        # one block reached: the usual split, or just past it
                return texts[max(taken, held):], texts[:max(taken, held)]
            tokens, taken = tokens + len(e.ids), taken + 1
    raise InputError(f"the corpus holds {tokens} tokens: too few for one block of {block_size} held out for the "
                     f"perplexity report and blocks to train on; give more text, a smaller max_length "
                     f"(--max-length), {HOLD_OUT_ADVICE}")
