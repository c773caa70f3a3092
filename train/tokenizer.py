"""A CLIP-format tokenizer (vocab.json + merges.txt) whose vocabulary is the caption words.

The files follow CLIP's layout exactly: the 256 byte-level characters, the same with ``</w>`` (end of word),
the merged tokens in merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding token).
The merges are learned by byte-pair encoding on the caption vocabulary until every caption word is one token,
so ``transformers.CLIPTokenizer`` maps each known word to a single id; any other word still tokenises (into
characters), never to an unknown token.

    python -m train.tokenizer OUT_DIR        # writes the tokenizer files and prints each word's id
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 16  # longest caption: 9 words + start + end = 11 tokens


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (most frequent pair first, ties alphabetical) until every word is a single token."""
    table = bytes_to_unicode()
    segmented = {w: [table[b] for b in w.encode()] for w in sorted(set(words))}
    for symbols in segmented.values():
        symbols[-1] += EOW
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(p for s in segmented.values() if len(s) > 1 for p in zip(s, s[1:]))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        segmented = {w: _merge_pair(s, pair) for w, s in segmented.items()}


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + EOW for c in chars] + ["".join(p) for p in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab


def write_tokenizer(folder: str | Path, words: list[str], model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json for ``words`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
              "clean_up_tokenization_spaces": False, **specials}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return folder


def special_ids(folder: str | Path) -> dict[str, int]:
    """bos/eos/pad ids of a written tokenizer (for the text encoder's config)."""
    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    return {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS], "vocab_size": len(vocab)}


def check_tokenizer(folder: str | Path, words: list[str]) -> dict[str, int]:
    """Load with transformers' CLIPTokenizer and check every word is one token; returns word -> id."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    ids = {}
    for w in words:
        got = tok(w).input_ids
        want = [vocab[BOS], vocab[w + EOW], vocab[EOS]]
        if got != want:
            raise AssertionError(f"CLIPTokenizer tokenises {w!r} as {got}, expected {want}")
        ids[w] = got[1]
    return ids


def main(argv: list[str] | None = None) -> int:
    from .data import vocabulary

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m train.tokenizer OUT_DIR", file=sys.stderr)
        return 2
    folder = write_tokenizer(argv[0], vocabulary())
    for word, i in check_tokenizer(folder, vocabulary()).items():
        print(f"{i:5d}  {word}")
    print(special_ids(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
