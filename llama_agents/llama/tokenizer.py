"""The Llama 3 tokenizer: tiktoken BPE over a base64 rank file, plus the 256 special tokens.

What it does: loads a `tokenizer.model` rank file (a local path or any URL blobfile reads, such as
`gs://` or `az://`), encodes text to ids and decodes ids to text or raw bytes, and names the special
ids the chat format and the generator need. Token ids, names and the split pattern are those of
Meta's Llama 3 reference tokenizer, so ids agree with it one for one.

Security property: text that merely *looks* like a special token (`<|start_header_id|>`) is
encoded as plain text unless the caller names it in `allowed_special`. Tool output and user text
therefore can never forge a message header.

What it does not do: it knows nothing of messages, roles or tool calls (that is `chat_format.py`),
imports no torch, and keeps no process-wide instance: build one per tokenizer file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal

import blobfile
import tiktoken

from llama_agents.errors import UsageError

__all__ = [
    "LLAMA3_PATTERN",
    "NUM_RESERVED_SPECIAL_TOKENS",
    "Tokenizer",
    "load_bpe_ranks",
    "special_token_names",
]

logger = logging.getLogger(__name__)

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""The pre-tokenization regex of Llama 3 (words, numbers in threes, punctuation runs, whitespace)."""

NUM_RESERVED_SPECIAL_TOKENS = 256
"""How many special ids follow the BPE ranks: the named ones, then `<|reserved_special_token_N|>`."""

# The named special tokens, in id order, right after the last BPE rank (128000 for Llama 3).
_NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model waits for a tool result
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
)

# tiktoken panics on inputs past about 400k characters, and its regex is quadratic on very long runs
# of only whitespace or only non-whitespace (openai/tiktoken#195). Text is cut into pieces at these
# limits before it reaches tiktoken, at the same places the reference tokenizer cuts, so ids agree.
_MAX_ENCODE_CHARS = 400_000
_MAX_RUN_CHARS = 25_000
# Maximal runs of whitespace or of non-whitespace; `\s` is exactly `str.isspace` for str patterns.
_RUN = re.compile(r"\s+|\S+")


def special_token_names(num_reserved: int = NUM_RESERVED_SPECIAL_TOKENS) -> list[str]:
    """The names of the special tokens in id order: the named ones, then reserved ones to fill up."""
    if num_reserved < len(_NAMED_SPECIAL_TOKENS):
        raise UsageError(f"num_reserved must be at least {len(_NAMED_SPECIAL_TOKENS)}, got {num_reserved}")
    reserved = [
        f"<|reserved_special_token_{2 + i}|>" for i in range(num_reserved - len(_NAMED_SPECIAL_TOKENS))
    ]
    return [*_NAMED_SPECIAL_TOKENS, *reserved]


def load_bpe_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Read a tiktoken rank file (`<base64 token> <rank>` per line) from a local path or a URL.

    Raises `UsageError` naming the path when the file is missing, unreadable or malformed, and
    when the ranks are not exactly 0..n-1 (the special ids are numbered right after them).
    """
    name = os.fspath(path)
    try:
        with blobfile.BlobFile(name, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise UsageError(
            f"tokenizer file not found: {name!r} (pass the path of a Llama 3 tokenizer.model)"
        ) from e
    except (OSError, blobfile.Error) as e:
        raise UsageError(f"cannot read tokenizer file {name!r}: {e}") from e

    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"expected '<base64 token> <rank>', got {len(fields)} fields")
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except (ValueError, binascii.Error) as e:
            snippet = line[:60].decode("utf-8", "replace")
            raise UsageError(f"tokenizer file {name!r} is corrupt at line {lineno} ({snippet!r}): {e}") from e
        if token in ranks:
            raise UsageError(
                f"tokenizer file {name!r} is corrupt at line {lineno}: token {token!r} appears twice"
            )
        ranks[token] = rank

    if not ranks:
        raise UsageError(f"tokenizer file {name!r} holds no tokens; is it a tiktoken tokenizer.model?")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UsageError(
            f"tokenizer file {name!r} is corrupt: its {len(ranks)} ranks are not exactly 0..{len(ranks) - 1}"
        )
    return ranks


def _split_long_runs(text: str, limit: int) -> Iterator[str]:
    """Cut `text` so that no piece holds more than `limit` consecutive whitespace or non-whitespace.

    A run longer than `limit` is cut every `limit` characters from its start; text between cuts stays
    together. An empty text yields one empty piece.
    """
    start = 0
    for run in _RUN.finditer(text):
        cut = run.start() + limit
        while cut < run.end():
            yield text[start:cut]
            start = cut
            cut += limit
    yield text[start:]


class Tokenizer:
    """Llama 3 tokenizer: `encode` / `decode` / `decode_bytes` and the named special ids.

    `Tokenizer(path)` reads a rank file; `Tokenizer.from_ranks(ranks)` builds one from ranks already
    in memory (a converter from another format, a tiny test vocabulary). Special ids follow the
    ranks: with Llama 3's 128000 ranks, `<|begin_of_text|>` is 128000 and `n_words` is 128256.
    """

    pattern: str = LLAMA3_PATTERN

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str | None = os.fspath(path)
        self._build(load_bpe_ranks(self.path), name=os.path.basename(self.path) or "tokenizer")

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], *, name: str = "llama3") -> Tokenizer:
        """Build a tokenizer from BPE ranks (token bytes -> rank, ranks exactly 0..n-1)."""
        if sorted(mergeable_ranks.values()) != list(range(len(mergeable_ranks))):
            raise UsageError("mergeable_ranks must map tokens to exactly the ranks 0..n-1")
        self = cls.__new__(cls)
        self.path = None
        self._build(dict(mergeable_ranks), name=name)
        return self

    def _build(self, mergeable_ranks: dict[bytes, int], *, name: str) -> None:
        n_base = len(mergeable_ranks)
        self.name = name
        self.special_tokens: dict[str, int] = {
            token: n_base + i for i, token in enumerate(special_token_names())
        }
        self._id_to_special = {i: token for token, i in self.special_tokens.items()}
        self.n_words: int = n_base + len(self.special_tokens)
        self._model = tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.bos_id: int = self.special_tokens["<|begin_of_text|>"]
        self.eos_id: int = self.special_tokens["<|end_of_text|>"]
        self.eot_id: int = self.special_tokens["<|eot_id|>"]
        self.eom_id: int = self.special_tokens["<|eom_id|>"]
        self.python_tag_id: int = self.special_tokens["<|python_tag|>"]
        self.pad_id: int = self.special_tokens["<|finetune_right_pad_id|>"]
        self.start_header_id: int = self.special_tokens["<|start_header_id|>"]
        self.end_header_id: int = self.special_tokens["<|end_header_id|>"]
        self.stop_tokens: frozenset[int] = frozenset({self.eos_id, self.eom_id, self.eot_id})
        logger.debug("tokenizer %s: %d BPE ranks, %d words", name, n_base, self.n_words)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_words={self.n_words})"

    def encode(
        self,
        s: str,
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: AbstractSet[str] | Literal["all"] = frozenset(),
    ) -> list[int]:
        """Encode `s` to ids, with `<|begin_of_text|>` / `<|end_of_text|>` around it if asked.

        Special-token look-alikes in `s` are plain text unless named in `allowed_special` (or
        `allowed_special="all"`); never allow specials for text you did not write yourself.
        Text of any length is accepted.
        """
        if not isinstance(s, str):
            raise UsageError(f"Tokenizer.encode takes a str, got {type(s).__name__}")
        allowed: AbstractSet[str] | Literal["all"]
        if allowed_special == "all":
            allowed = "all"
        else:
            unknown = set(allowed_special) - self.special_tokens.keys()
            if unknown:
                raise UsageError(
                    f"allowed_special names tokens that are not special tokens: {sorted(unknown)}"
                )
            allowed = allowed_special
        ids: list[int] = [self.bos_id] if bos else []
        for i in range(0, max(len(s), 1), _MAX_ENCODE_CHARS):
            for piece in _split_long_runs(s[i : i + _MAX_ENCODE_CHARS], _MAX_RUN_CHARS):
                ids.extend(self._model.encode(piece, allowed_special=allowed, disallowed_special=()))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Decode ids to text; special ids come out as their names, invalid UTF-8 as U+FFFD."""
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """Decode ids to raw bytes, for streaming: a UTF-8 character may span several tokens."""
        try:
            return self._model.decode_bytes(list(tokens))
        except (KeyError, OverflowError, TypeError) as e:
            bad = [t for t in tokens if not isinstance(t, int) or not 0 <= t < self.n_words]
            raise UsageError(
                f"cannot decode token ids {bad[:5]}: ids must be ints in [0, {self.n_words})"
            ) from e

    def id_to_piece(self, token: int) -> str:
        """The text of one token (a special token's name for special ids); for display and logs."""
        special = self._id_to_special.get(token)
        if special is not None:
            return special
        return self.decode([token])

    def is_special(self, token: int) -> bool:
        """Whether `token` is one of the special ids (after the BPE ranks)."""
        return token in self._id_to_special
