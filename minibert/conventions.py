"""sentence-transformers' spellings of encode's options, so code written for SentenceTransformer runs as is.

    normalize_embeddings=   -> normalize=
    show_progress_bar=      -> progress=
    convert_to_numpy=True   -> the default (an array); False -> a list with one array per text
    convert_to_tensor=True  -> refused: minibert returns NumPy, never torch tensors
"""

from collections.abc import Mapping
from typing import Any, Iterator, List, Tuple, Union

from .errors import InputError

RENAMED = {"normalize_embeddings": "normalize", "show_progress_bar": "progress"}
KNOWN = tuple(RENAMED) + ("convert_to_numpy", "convert_to_tensor")


def translate(options: dict, given: dict) -> Tuple[dict, bool]:
    """encode's own options updated with the sentence-transformers spellings in `given`; returns
    (options, as_list) where as_list asks for a list of per-text arrays instead of one array."""
    unknown = sorted(set(given) - set(KNOWN))
    if unknown:
        raise InputError(f"encode got unexpected option(s) {', '.join(unknown)}; sentence-transformers spellings "
                         f"accepted: {', '.join(KNOWN)}")
    options = dict(options)
    for theirs, ours in RENAMED.items():
        if theirs in given:
            if options.get(ours) is not None:
                raise InputError(f"pass {ours}= or {theirs}=, not both")
            options[ours] = given[theirs]
    if given.get("convert_to_tensor"):
        raise InputError("convert_to_tensor: minibert returns NumPy arrays, never torch tensors; "
                         "wrap the result with torch.from_numpy if you need one")
    return options, given.get("convert_to_numpy", True) is False


def shape_like_sentence_transformers(vectors: Any, single: bool, as_list: bool) -> Any:
    """One text given as a str -> its vector [H] (or token vectors [n, H]); as_list -> list of [H]."""
    if single:
        return vectors[0]
    if as_list and not isinstance(vectors, list):
        return list(vectors)
    return vectors


class FieldMapping(Mapping):
    """A dataclass's main fields as a read-only mapping, as transformers' BatchEncoding is: batch["input_ids"],
    model.forward(**batch). Keys are MAPPING_KEYS whose value is set (not None); the rest stay attributes."""
    MAPPING_KEYS: Tuple[str, ...] = ()

    def set_keys(self) -> List[str]:
        return [key for key in self.MAPPING_KEYS if getattr(self, key) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self.set_keys():
            raise KeyError(f"{key!r}: this {type(self).__name__} holds {', '.join(self.set_keys())} "
                           "(the other fields are attributes)")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.set_keys())

    def __len__(self) -> int:
        return len(self.set_keys())


class OutputMapping(FieldMapping):
    """As transformers' ModelOutput: out["last_hidden_state"], out[0], out.to_tuple(), keys only for what is set."""

    def __getitem__(self, key: Union[str, int, slice]) -> Any:      # as ModelOutput: by name or position
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, key) for key in self.set_keys())
