"""Small learnable data sets the recipes train on when no data is given.

Both generators are deterministic (a seeded ``random.Random``; no global RNG is touched), write
plain text files in formats the loaders read, and are sized so that a recipe trains on them in
well under a minute on two CPU cores while still showing a real length distribution.

* :func:`write_classification_data`: ``train/dev/test.jsonl`` with ``text`` and a string
  ``label`` (``negative``/``neutral``/``positive``), 4 to ~300 words per text. The label is the
  class of the majority of a few cue words hidden among filler words.
* :func:`write_tagging_data`: ``train/dev/test.conll`` column files (``token TAG``, blank line
  between sentences) with BIO tags for ``PER``/``LOC``/``ORG`` spans. Entity names are made of
  random syllables, so most dev/test names are unseen in training and spelling (character
  features) and context words matter.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

__all__ = ["write_classification_data", "write_tagging_data"]

_CUES = {
    "negative": ["awful", "dull", "boring", "weak", "terrible", "bland"],
    "neutral": ["average", "okay", "fine", "mixed", "passable", "moderate"],
    "positive": ["great", "superb", "moving", "brilliant", "fun", "lovely"],
}
_SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vi", "dor", "an", "el", "mar", "bu", "zi", "pe", "gan", "ul"]


def _filler(rng: random.Random, size: int = 600) -> list[str]:
    letters = "bcdfghjklmnprstvwz"
    vowels = "aeiou"
    words = set()
    while len(words) < size:
        n = rng.randint(1, 3)
        words.add("".join(rng.choice(letters) + rng.choice(vowels) for _ in range(n)))
    return sorted(words)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds exactly it (a resumed run leaves it untouched)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.write_text(text, encoding="utf-8")


def write_classification_data(directory: str | os.PathLike, *, n_train: int = 2000, n_dev: int = 400,
                              n_test: int = 400, seed: int = 0) -> dict[str, str]:
    """Write ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` to ``directory`` (created if needed).

    Returns ``{"train": path, "dev": path, "test": path}``. The same arguments always write the
    same bytes; a file that already holds them is not rewritten.
    """
    rng = random.Random(seed)
    filler = _filler(rng)
    classes = sorted(_CUES)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        path = out / f"{split}.jsonl"
        lines = []
        for _ in range(n):
            label = rng.choice(classes)
            length = min(300, int(rng.lognormvariate(3.4, 0.7)) + 4)
            words = [rng.choice(filler) for _ in range(length)]
            n_cues = rng.choice((1, 1, 2, 3))
            other = rng.choice([c for c in classes if c != label])
            cues = [label] * n_cues + ([other] * (n_cues - 1) if n_cues > 1 else [])
            for cls in cues:
                words[rng.randrange(length)] = rng.choice(_CUES[cls])
            lines.append(json.dumps({"text": " ".join(words), "label": label}) + "\n")
        _write_if_changed(path, "".join(lines))
        paths[split] = str(path)
    return paths


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _entity(rng: random.Random, kind: str) -> tuple[list[str], list[str]]:
    if kind == "PER":
        words = ([rng.choice(["Mr", "Dr", "Ms"])] if rng.random() < 0.3 else []) + [_name(rng)]
        if rng.random() < 0.6:
            words.append(_name(rng))
        prefix_o = words[0] in ("Mr", "Dr", "Ms")
        tags = (["O"] if prefix_o else []) + ["B-PER"] + ["I-PER"] * (len(words) - 1 - prefix_o)
        return words, tags
    if kind == "LOC":
        words = [_name(rng)] + ([rng.choice(["City", "Valley", "Bay"])] if rng.random() < 0.4 else [])
        return words, ["B-LOC"] + ["I-LOC"] * (len(words) - 1)
    words = [_name(rng) for _ in range(rng.randint(1, 2))] + [rng.choice(["Corp", "Inc", "Group", "Labs"])]
    return words, ["B-ORG"] + ["I-ORG"] * (len(words) - 1)


_CONTEXT = {"PER": ["said", "met", "asked", "told"], "LOC": ["in", "near", "from", "to"],
            "ORG": ["joined", "bought", "sued", "left"]}


def write_tagging_data(directory: str | os.PathLike, *, n_train: int = 1500, n_dev: int = 200,
                       n_test: int = 200, seed: int = 0) -> dict[str, str]:
    """Write ``train.conll``, ``dev.conll``, ``test.conll`` (``token TAG`` lines, BIO tags).

    Returns ``{"train": path, "dev": path, "test": path}``; deterministic in its arguments (a file
    that already holds its bytes is not rewritten).
    """
    rng = random.Random(seed + 1)
    filler = [w for w in _filler(rng, 400)]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        path = out / f"{split}.conll"
        sentences = []
        for _ in range(n):
            words: list[str] = []
            tags: list[str] = []
            for _ in range(rng.randint(1, 6)):
                for _ in range(rng.randint(1, 6)):
                    words.append(rng.choice(filler))
                    tags.append("O")
                if rng.random() < 0.7:
                    kind = rng.choice(["PER", "LOC", "ORG"])
                    if rng.random() < 0.8:
                        words.append(rng.choice(_CONTEXT[kind]))
                        tags.append("O")
                    ew, et = _entity(rng, kind)
                    words += ew
                    tags += et
            words.append(".")
            tags.append("O")
            sentences.append("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")
        _write_if_changed(path, "".join(sentences))
        paths[split] = str(path)
    return paths
