"""Checkpoint tokenizers: a ``tokenizers.Tokenizer`` with the ids of its special tokens, read from
LLaDA's ``tokenizer.json`` or Dream's ``vocab.json`` + ``merges.txt`` (the same Qwen2-style
byte-level BPE)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import tokenizers

from .checkpoint import _read_json

# Qwen2's pre-tokenizer regex (Dream's tokenization_dream.py: PRETOKENIZE_REGEX)
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_ROLE_TOKENS = {
    "mask": ("<|mdm_mask|>", "<|mask|>", "|<MASK>|", "<|MASK|>"),
    "eos": ("<|endoftext|>",),
    "bos": ("<|startoftext|>", "<|beginoftext|>"),
    "eot": ("<|eot_id|>", "<|im_end|>"),
}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_level_bpe(vocab: dict[str, int], merges: list[str], special: dict[str, int]) -> dict:
    """A ``tokenizers`` JSON document of a Qwen2-style byte-level BPE (NFC, regex split, byte
    level) whose special tokens sit at the given ids (they enter the model vocab too, which is
    what makes ``tokenizers`` keep ids that do not follow the vocab contiguously)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in sorted(special.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {**vocab, **special},
            "merges": merges,
        },
    }


@dataclass(frozen=True)
class Tokenizer:
    """A checkpoint's tokenizer: a ``tokenizers.Tokenizer`` and the ids of its special tokens."""

    backend: tokenizers.Tokenizer
    special_ids: dict[str, int]  # content -> id of every special added token

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added; special-token strings map to their ids)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _role(self, role: str) -> int | None:
        return next((self.special_ids[t] for t in _ROLE_TOKENS[role] if t in self.special_ids), None)

    @property
    def mask_id(self) -> int | None:  # <|mdm_mask|> (LLaDA) / <|mask|> (Dream) / |<MASK>| (Fast-dLLM v2)
        return self._role("mask")

    @property
    def eos_id(self) -> int | None:  # <|endoftext|>
        return self._role("eos")

    @property
    def bos_id(self) -> int | None:  # <|startoftext|> (LLaDA) / <|beginoftext|> (Dream)
        return self._role("bos")

    @property
    def eot_id(self) -> int | None:  # end of turn: <|eot_id|> (LLaDA) / <|im_end|> (Dream)
        return self._role("eot")


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint directory: ``tokenizer.json`` (LLaDA), or else Dream's
    ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (its added tokens), read as the
    same Qwen2 byte-level BPE that Dream's ``DreamTokenizer`` implements."""
    path = pathlib.Path(path)
    if (path / "tokenizer.json").is_file():
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [m for i, m in enumerate(lines) if m.strip() and not (i == 0 and m.startswith("#version"))]
        added = _read_json(path / "tokenizer_config.json").get("added_tokens_decoder", {})
        special = {t["content"]: int(i) for i, t in added.items() if t.get("special")}
        doc = _byte_level_bpe(_read_json(path / "vocab.json"), merges, special)
        backend = tokenizers.Tokenizer.from_str(json.dumps(doc))
    else:
        raise FileNotFoundError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    return Tokenizer(backend, special)
