"""Text -> token ids, attention mask, token type ids, offsets and word ids, through `tokenizers`."""

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from . import files
from .checkpoint.config import Config
from .conventions import FieldMapping
from .errors import InputError, MiniBertError, TokenizerError, warn_caller
from .checkpoint.families import FAMILIES


@dataclass
class Batch(FieldMapping):
    """Also a mapping of the three id arrays, as transformers' BatchEncoding: model.forward(**batch)."""
    MAPPING_KEYS = ("input_ids", "attention_mask", "token_type_ids")
    input_ids: np.ndarray        # [B, T] int64, right-padded to the longest text in the batch
    attention_mask: np.ndarray   # [B, T] int64, 1 for tokens, 0 for padding
    token_type_ids: np.ndarray   # [B, T] int64, 0 for the first text, 1 for the pair's second (all 0 for
                                 #   models with one token type: RoBERTa, XLM-R, DistilBERT)
    offsets: list                # B arrays [n_b, 2]: character span of each token in its own text
    word_ids: list               # B arrays [n_b]: index of the word each token belongs to, -1 for special tokens
    sequence_ids: list           # B arrays [n_b]: 0 first text, 1 second text, -1 special tokens
    tokens: list                 # B lists of token strings
    truncated: np.ndarray        # [B] bool, True where tokens were cut to fit max_length


def read_json(path: Path) -> dict:
    """A tokenizer settings file as a dict; {} when the file is absent."""
    try:
        found = files.read_json(path, files.SETTINGS_LIMIT, TokenizerError, path.name)
    except FileNotFoundError:
        return {}
    if not isinstance(found, dict):
        raise TokenizerError(f"{path}: must hold a JSON object, found {type(found).__name__}")
    return found


SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def has_tokenizer_files(model_dir: Path) -> bool:
    """Whether model_dir holds one of the vocabularies Tokenizer reads."""
    return (present(model_dir / "tokenizer.json") or present(model_dir / "vocab.txt")
            or (present(model_dir / "vocab.json") and present(model_dir / "merges.txt")))


def tokenizer_dir(model_dir: Path) -> Path:
    """The folder whose tokenizer files Tokenizer reads: model_dir, or the folder above it when only that one
    holds a vocabulary (a Trainer's checkpoint-500/ under the folder the tokenizer was saved to). Every
    tokenizer file comes from that one folder, so a vocabulary never mixes with another folder's settings."""
    if has_tokenizer_files(model_dir):
        return model_dir
    parent = model_dir.resolve().parent
    return parent if parent != model_dir.resolve() and has_tokenizer_files(parent) else model_dir


def present(path: Path) -> bool:
    """A tokenizer file is there (a regular file); a FIFO, device or directory by that name is refused."""
    return files.is_present(path, TokenizerError, path.name)


def read_text(path: Path) -> str:
    """A whole tokenizer file (tokenizer.json, vocab.txt) as text, size-capped, regular files only."""
    try:
        return files.read_limited(path, files.TOKENIZER_LIMIT, TokenizerError, path.name).decode("utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: disappeared while the tokenizer was being read") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e}); copy the checkpoint's tokenizer files again") from None


class Tokenizer:
    """The model's own tokenizer: tokenizer.json when present, else WordPiece built from vocab.txt, else
    RoBERTa's byte-level BPE built from vocab.json + merges.txt (the files older checkpoints carry)."""

    def __init__(self, model_dir: Path, config: Config):
        try:
            self.build(model_dir, config)
        except (MiniBertError, Warning, KeyboardInterrupt, SystemExit):     # Warning: one turned into an error
            raise
        except BaseException as e:    # a setting of the wrong type, tokenizers refusing a value (or panicking)
            raise TokenizerError(f"{model_dir}: the tokenizer files are inconsistent ({type(e).__name__}: {e}); "
                                 "copy the checkpoint's tokenizer files again") from None

    def build(self, weights_dir: Path, config: Config):
        model_dir = self.dir = tokenizer_dir(weights_dir)
        # Names as inspect shows them, relative to the weights' folder: "vocab.txt" or "../vocab.txt".
        where = "" if model_dir == weights_dir else "../"
        settings = read_json(model_dir / "tokenizer_config.json")
        tokenizer_json, vocab_txt = model_dir / "tokenizer.json", model_dir / "vocab.txt"
        vocab_json, merges_txt = model_dir / "vocab.json", model_dir / "merges.txt"
        specials = {**settings, **read_json(model_dir / "special_tokens_map.json")}   # as transformers 4 merged them
        self.files = [where + name for name in SETTINGS_FILES if present(model_dir / name)]   # read, for inspect
        if present(tokenizer_json):
            text = read_text(tokenizer_json)
            try:
                self.backend = HFTokenizer.from_str(text)
            except Exception as e:
                raise TokenizerError(f"{tokenizer_json}: not a valid tokenizers file ({e})") from None
            self.kind = f"tokenizer.json ({type(self.backend.model).__name__})"
            self.files.append(where + tokenizer_json.name)
            self.apply_bert_settings(settings)
        elif present(vocab_txt):
            self.backend = wordpiece_from_vocab(vocab_txt, settings, specials, config.model_type)
            self.kind = "vocab.txt (WordPiece)"
            self.files.append(where + vocab_txt.name)
        elif present(vocab_json) and present(merges_txt):
            self.backend = bytelevel_bpe_from_files(vocab_json, merges_txt, settings, specials)
            self.kind = "vocab.json + merges.txt (byte-level BPE)"
            self.files += [where + vocab_json.name, where + merges_txt.name]
        else:
            raise TokenizerError(f"{model_dir}: no tokenizer.json or vocab.txt (nor vocab.json + merges.txt), here "
                                 "or in the folder above; copy the tokenizer files of the checkpoint into this "
                                 "directory")
        # Files saved by Hugging Face often carry fixed padding and truncation; minibert pads and cuts itself.
        self.backend.no_padding()
        self.backend.no_truncation()
        ids = self.backend.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(self.backend.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
        if self.vocab_size > config.vocab_size:
            raise TokenizerError(f"{model_dir}: the tokenizer has {self.vocab_size} tokens but the embedding "
                                 f"matrix has {config.vocab_size} rows; the tokenizer belongs to another model")
        limit = settings.get("model_max_length", settings.get("max_len"))    # max_len: transformers < 4's name
        limit = limit if isinstance(limit, int) and 0 < limit <= config.max_tokens else None
        self.max_length = limit or config.max_tokens
        self.pad_id = config.pad_token_id
        # A second segment only means something to a model with a second token-type row.
        self.single_segment = config.type_vocab_size == 1
        self.check_special_ids(model_dir, config)

    def check_special_ids(self, model_dir, config):
        """The ids the post-processor adds ([CLS], [SEP], <s>, ...) come from its own table, not the vocabulary:
        encode probes so that a table pointing past the embedding matrix fails here, not in forward."""
        probes = self.backend.encode_batch(["a"], add_special_tokens=True)
        try:
            probes += self.backend.encode_batch([("a", "b")], add_special_tokens=True)
        except Exception:      # a tokenizer without a pair template: pairs fail when asked for, not here
            pass
        for e in probes:
            outside = [(token, i) for token, i in zip(e.tokens, e.ids) if not 0 <= i < config.vocab_size]
            if outside:
                token, i = outside[0]
                raise TokenizerError(f"{model_dir}: the tokenizer gives {token!r} the id {i}, outside the model's "
                                     f"{config.vocab_size} embedding rows; the tokenizer files belong to another model")

    def apply_bert_settings(self, settings: dict) -> None:
        """tokenizer_config.json overrides the BertNormalizer stored in tokenizer.json, as transformers does."""
        # The normalizer's own JSON: serialising the whole tokenizer (its vocabulary) cost ~15 ms of the cold start.
        current = self.backend.normalizer
        normalizer = json.loads(current.__getstate__()) if current is not None else {}
        if normalizer.get("type") != "BertNormalizer":
            return
        wanted = {"lowercase": settings.get("do_lower_case", normalizer.get("lowercase")),
                  "strip_accents": settings.get("strip_accents", normalizer.get("strip_accents")),
                  "handle_chinese_chars": settings.get("tokenize_chinese_chars",
                                                       normalizer.get("handle_chinese_chars"))}
        if any(normalizer.get(key) != value for key, value in wanted.items()):
            self.backend.normalizer = normalizers.BertNormalizer(clean_text=normalizer.get("clean_text", True),
                                                                 **wanted)

    def __call__(self, texts, text_pairs=None, *, max_length=None, truncation=True) -> Batch:
        texts = as_text_list(texts, "texts")
        if text_pairs is not None:
            text_pairs = as_text_list(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise InputError(f"text_pairs has {len(text_pairs)} texts but texts has {len(texts)}; "
                                 "pass one pair text per text")
        limit = self.max_length if max_length is None else max_length
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 2 + (text_pairs is not None):
            raise InputError(f"max_length must be an int of at least {2 + (text_pairs is not None)}, found {limit!r}")
        if limit > self.max_length:
            raise InputError(f"max_length {limit} exceeds the model's {self.max_length} positions; "
                             "use window/stride for longer texts")
        inputs = texts if text_pairs is None else list(zip(texts, text_pairs))
        encodings = encode_batch(self.backend, inputs, limit if truncation else None,
                                 what="texts" if text_pairs is None else "text pairs")
        lengths = [len(e.ids) for e in encodings]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if too_long:
            raise InputError(f"text {too_long[0]} has {lengths[too_long[0]]} tokens, more than the model's "
                             f"{self.max_length} positions; keep truncation=True or use window/stride")
        B, T = len(encodings), max(lengths, default=0)
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((B, T), dtype=np.int64)
        token_type_ids = np.zeros((B, T), dtype=np.int64)
        for b, e in enumerate(encodings):
            n = lengths[b]
            input_ids[b, :n], attention_mask[b, :n] = e.ids, 1
            token_type_ids[b, :n] = 0 if self.single_segment else e.type_ids
        return Batch(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     offsets=[np.array(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encodings],
                     word_ids=[np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
                               for e in encodings],
                     sequence_ids=[np.array([-1 if s is None else s for s in e.sequence_ids], dtype=np.int64)
                                   for e in encodings],
                     tokens=[list(e.tokens) for e in encodings],
                     truncated=np.array([bool(e.overflowing) for e in encodings], dtype=bool))

    @functools.cached_property
    def word_prefix_backend(self):
        """For pre-split words (encode_words on word lists): a copy of a byte-level BPE tokenizer (RoBERTa,
        GPT-2 style) that encodes each word as if a space came before it ("Hund" -> "ĠHund"), as transformers
        does with is_split_into_words=True and add_prefix_space=True; None when the tokenizer has no
        byte-level pre-tokenizer (WordPiece, SentencePiece: their words need no such help)."""
        state = json.loads(self.backend.to_str())
        pre = state.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        byte_level = [step for step in steps if isinstance(step, dict) and step.get("type") == "ByteLevel"]
        if not byte_level:
            return None
        for step in byte_level:
            step["add_prefix_space"] = True
        return HFTokenizer.from_str(json.dumps(state))

    @functools.cached_property
    def unk_id(self):
        """The id of the unknown-piece token ([UNK], <unk>), or None when the model has none."""
        token = getattr(self.backend.model, "unk_token", None)     # WordPiece, BPE, WordLevel
        if token is not None:
            return self.backend.token_to_id(token)
        if not isinstance(self.backend.model, models.Unigram):
            return None
        unk_id = (json.loads(self.backend.to_str()).get("model") or {}).get("unk_id")   # SentencePiece
        return None if unk_id is None else int(unk_id)


def as_text_list(texts, what: str) -> list:
    """A str, or a list, tuple or 1-D NumPy array of str; anything else is an InputError naming the offending item."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray) and texts.ndim == 1:
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        iterable = hasattr(texts, "__iter__") and not isinstance(texts, (bytes, dict, np.ndarray))
        raise InputError(f"{what} must be a str or a list of str, found {type(texts).__name__}"
                         + (f" (pass list({what}) to read it whole)" if iterable else ""))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            hint = {bytes: "decode it first (b.decode('utf-8'))", list: "pass pre-split words to encode_words",
                    tuple: "pass pre-split words to encode_words", type(None): "drop it or pass an empty string"}
            raise InputError(f"{what}[{i}] is {type(text).__name__}, not str; "
                             + hint.get(type(text), "convert it to text first (str(x))"))
    return list(texts)


# Truncation is a setting of the tokenizers object, not an argument of encode_batch: setting it and encoding
# happen under one lock, so that threads sharing a model cannot encode with each other's limit.
TRUNCATION = threading.Lock()


def encode_batch(backend, inputs, limit, what="texts", **options):
    """backend.encode_batch with truncation to `limit` tokens (None: none), its errors turned into an
    InputError naming the text at fault.

    Lone surrogates (U+D800..U+DFFF on their own, e.g. from JSON escapes or surrogateescape decoding) cannot be
    encoded as UTF-8; transformers' fast tokenizers refuse them too, so minibert refuses them rather than
    guessing a replacement.
    """
    try:
        with TRUNCATION:
            if limit is None:
                backend.no_truncation()
            else:
                backend.enable_truncation(limit, strategy="longest_first")
            return backend.encode_batch(inputs, add_special_tokens=True, **options)
    except Exception as e:
        for i, item in enumerate(inputs):
            for j, text in enumerate(item if isinstance(item, (list, tuple)) else [item]):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as bad:
                    if what == "text pairs":
                        where = f"{('texts', 'text_pairs')[j]}[{i}]"
                    else:
                        where = f"{what}[{i}]" + (f"[{j}]" if isinstance(item, (list, tuple)) else "")
                    raise InputError(f"{where} holds a lone surrogate {text[bad.start]!r} at character {bad.start}, "
                                     "which is not valid Unicode text; repair the input, e.g. "
                                     "text.encode('utf-8', 'replace').decode('utf-8')") from None
        raise InputError(f"the tokenizer cannot encode these {what} ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class WordPieceStyle:
    """What a WordPiece tokenizer class assumes when tokenizer_config.json does not say: its special tokens
    (transformers' class defaults), the ones that swallow the space before them, and how texts are wrapped."""
    specials: dict
    lstrip: tuple
    roberta_wrapping: bool     # <s> A </s></s> B </s>, offsets trimmed of spaces; else [CLS] A [SEP] B [SEP]


WORDPIECE_STYLES = {
    "BertTokenizer": WordPieceStyle({"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]",
                                     "mask": "[MASK]"}, (), False),
    # transformers' MPNetTokenizer wraps with RoBERTa's post-processor: its pair joining, and "<mask>" (which
    # takes the space before it) keeps an offset without that space.
    "MPNetTokenizer": WordPieceStyle({"bos": "<s>", "eos": "</s>", "unk": "[UNK]", "sep": "</s>", "pad": "<pad>",
                                      "cls": "<s>", "mask": "<mask>"}, ("mask",), True),
}
def wordpiece_style(settings: dict, model_type: str) -> WordPieceStyle:
    # When tokenizer_config.json names no class (older checkpoints), the one transformers' AutoTokenizer picks
    # from config.json's model_type: the family's tokenizer_class.
    named = str(settings.get("tokenizer_class") or FAMILIES[model_type].tokenizer_class)
    return WORDPIECE_STYLES["MPNetTokenizer" if named.startswith("MPNet") else "BertTokenizer"]


def wordpiece_from_vocab(vocab_txt: Path, settings: dict, specials: dict, model_type: str = "bert") -> HFTokenizer:
    """BERT's WordPiece pipeline from vocab.txt, honouring tokenizer_config.json's casing settings and the
    special tokens of its tokenizer class (named there, or implied by config.json's model_type)."""
    style = wordpiece_style(settings, model_type)
    # A token's id is its line number, a repeated token keeping its last line, lines split on \n, \r\n and \r
    # only, as transformers' load_vocab and tokenizers' WordPiece read the file (str.splitlines would also
    # split on form feeds, U+2028, NEL, ..., which vocabularies hold, and shift every later id).
    lines = read_text(vocab_txt).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()               # the newline ending the last line
    vocab = {line: i for i, line in enumerate(lines)}
    added = special_tokens(specials, settings, style.specials, lstrip=style.lstrip)
    unk, cls, sep = (added[name].content for name in ("unk", "cls", "sep"))
    for name, token in (("unk", unk), ("cls", cls), ("sep", sep)):
        if token not in vocab:
            raise TokenizerError(f"{vocab_txt}: the {name} token {token!r} is not in the vocabulary")
    lowercase = settings.get("do_lower_case")
    if lowercase is None:
        # BertTokenizer's default is to lower-case; a vocabulary with no lower-case letter could then match no
        # letter at all (AntiBERTy's amino acids, A C D ... Y, each text [UNK] throughout): it is read as cased.
        lowercase = not upper_case_only(vocab)
        if not lowercase:
            warn_caller(f"{vocab_txt}: its letters are all upper case and no tokenizer_config.json sets "
                        f"do_lower_case, so texts are not lower-cased (BertTokenizer's default, do_lower_case=True, "
                        f"would make every letter {unk}); a tokenizer_config.json with do_lower_case silences this")
    tokenizer = HFTokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, lowercase=lowercase,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Special tokens are matched whole before WordPiece sees the text: "[MASK]" stays one token.
    tokenizer.add_special_tokens([token for token in added.values() if token.content in vocab])
    if style.roberta_wrapping:
        tokenizer.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), trim_offsets=bool(settings.get("trim_offsets", True)),
            add_prefix_space=False)
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def upper_case_only(vocab) -> bool:
    """Whether the vocabulary's letters, outside bracketed special tokens ([CLS], [unused0], <s>), are all
    upper case (and there is at least one)."""
    words = [token for token in vocab if not (token[:1] in "[<" and token[-1:] in "]>")]
    return (not any(c.islower() for word in words for c in word)
            and any(c.isupper() for word in words for c in word))


def bytelevel_bpe_from_files(vocab_json: Path, merges_txt: Path, settings: dict, specials: dict) -> HFTokenizer:
    """RoBERTa's pipeline: byte-level pre-tokenizer, BPE, <s> A </s></s> B </s> around the text.

    Like transformers' RobertaTokenizer, <mask> swallows the space before it unless the files say otherwise,
    so "the <mask> of" tokenizes as on the Hub.
    """
    for path in (vocab_json, merges_txt):      # tokenizers reads them itself: check kind and size first
        size = files.regular_size(path, TokenizerError, path.name)
        if size is not None and size > files.TOKENIZER_LIMIT:
            raise TokenizerError(files.too_large(path, path.name, size, files.TOKENIZER_LIMIT))
    try:
        model = models.BPE.from_file(str(vocab_json), str(merges_txt))
    except Exception as e:
        raise TokenizerError(f"{vocab_json.parent}: cannot read vocab.json + merges.txt "
                             f"as byte-level BPE ({e})") from None
    add_prefix_space = bool(settings.get("add_prefix_space", False))
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    added = special_tokens(specials, settings, {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "sep": "</s>",
                                                "cls": "<s>", "pad": "<pad>", "mask": "<mask>"}, lstrip=("mask",))
    tokenizer.add_special_tokens(list(added.values()))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    cls, sep = added["cls"].content, added["sep"].content
    for token in (cls, sep):
        if token not in vocab:
            raise TokenizerError(f"{vocab_json}: the special token {token!r} is not in the vocabulary")
    tokenizer.post_processor = processors.RobertaProcessing(
        (sep, vocab[sep]), (cls, vocab[cls]), trim_offsets=bool(settings.get("trim_offsets", True)),
        add_prefix_space=add_prefix_space)
    return tokenizer


def special_tokens(specials: dict, settings: dict, defaults: dict, lstrip=()) -> dict:
    """name ("unk", "cls", ...) -> AddedToken, from tokenizer_config.json / special_tokens_map.json.

    A token is a plain string or a dict with lstrip/rstrip/... flags; tokenizer_config.json's
    added_tokens_decoder (transformers >= 4.34) gives the final flags of every token it lists.
    """
    flags = {entry.get("content"): entry for entry in (settings.get("added_tokens_decoder") or {}).values()
             if isinstance(entry, dict)}
    tokens = {}
    for name, default in defaults.items():
        value = specials.get(f"{name}_token", default)
        value = value if isinstance(value, dict) else {"content": value, "lstrip": name in lstrip}
        value = {**value, **flags.get(value["content"], {})}
        tokens[name] = AddedToken(value["content"], single_word=value.get("single_word", False),
                                  lstrip=value.get("lstrip", False), rstrip=value.get("rstrip", False),
                                  normalized=value.get("normalized", False), special=True)
    return tokens
