"""One-pass parsers of CoNLL-U files and whitespace-separated CoNLL column files into flat
token / tag columns (:class:`_ParsedTagging`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqbucket_plugin.datapipes.loaders.locate import _first_invalid_utf8_line
from seqbucket_plugin.errors import DataFormatError


@dataclass
class _ParsedTagging:
    """Flat token/tag columns of a tagging file; sentence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""

    tokens: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    token_lines: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])
    sentence_ids: list[str | None] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    dropped_empty: int = 0

    def end_sentence(self, sentence_id: str | None, had_lines: bool) -> None:
        if len(self.tokens) > self.offsets[-1]:
            self.offsets.append(len(self.tokens))
            self.sentence_ids.append(sentence_id)
        elif had_lines:
            self.dropped_empty += 1


def _open_text(path: Path):
    return open(path, encoding="utf-8-sig")  # a leading BOM must not hide the first comment


def _parse_conllu(path: Path, tag_field: int) -> _ParsedTagging:
    """One pass over a CoNLL-U file; raises DataFormatError with the line of the first malformed line."""
    out = _ParsedTagging(skipped={"comment": 0, "multiword": 0, "empty_node": 0})
    tokens, tags, token_lines = out.tokens, out.tags, out.token_lines
    sentence_id: str | None = None
    in_block = False
    try:
        with _open_text(path) as handle:
            for line_no, raw in enumerate(handle, 1):
                line = raw.rstrip("\r\n")
                if not line or line.isspace():
                    if in_block:
                        out.end_sentence(sentence_id, True)
                        sentence_id, in_block = None, False
                    continue
                in_block = True
                if line[0] == "#":
                    out.skipped["comment"] += 1
                    sentence_id = _sent_id(line) or sentence_id
                    continue
                fields = line.split("\t")
                if len(fields) != 10:
                    raise DataFormatError(
                        f"expected 10 tab-separated fields, found {len(fields)}", path, line_no
                    )
                token_id = fields[0]
                if not (token_id.isascii() and token_id.isdigit()):
                    out.skipped[_non_integer_id_kind(token_id, path, line_no)] += 1
                    continue
                expected = len(tokens) - out.offsets[-1] + 1
                if int(token_id) != expected:
                    raise DataFormatError(
                        f"token id {token_id} out of sequence, expected {expected}", path, line_no
                    )
                form, tag = fields[1], fields[tag_field]
                if not form or not tag:
                    raise DataFormatError("empty FORM or tag field (use '_' for unspecified)", path, line_no)
                tokens.append(form)
                tags.append(tag)
                token_lines.append(line_no)
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
    if in_block:
        out.end_sentence(sentence_id, True)
    return out


def _sent_id(comment: str) -> str | None:
    """The value of a ``# sent_id = X`` comment, else None."""
    key, sep, value = comment[1:].partition("=")
    return value.strip() if sep and key.strip() == "sent_id" else None


def _non_integer_id_kind(token_id: str, path: Path, line_no: int) -> str:
    """``multiword`` for ``3-4``, ``empty_node`` for ``8.1``; DataFormatError for anything else."""
    for separator, kind in (("-", "multiword"), (".", "empty_node")):
        first, sep, second = token_id.partition(separator)
        if sep and all(part.isascii() and part.isdigit() for part in (first, second)):
            return kind
    raise DataFormatError(
        f"token id {token_id!r} is not an integer, a range (3-4) or an empty node (8.1)", path, line_no
    )


def _parse_conll_columns(path: Path, token_column: int, tag_column: int, min_fields: int) -> _ParsedTagging:
    """One pass over a whitespace-separated one-token-per-line file (CoNLL-2003 style)."""
    out = _ParsedTagging(skipped={"docstart": 0})
    tokens, tags, token_lines = out.tokens, out.tags, out.token_lines
    negative = token_column < 0 or tag_column < 0
    first_width: int | None = None
    first_line = 0
    try:
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    out.end_sentence(None, False)
                    continue
                if fields[0] == "-DOCSTART-":
                    out.skipped["docstart"] += 1
                    continue
                if len(fields) < min_fields:
                    raise DataFormatError(
                        f"expected at least {min_fields} whitespace-separated fields "
                        f"(token_column={token_column}, tag_column={tag_column}), found {len(fields)}",
                        path,
                        line_no,
                    )
                if negative:  # a line with a column missing would shift a column counted from the end
                    if first_width is None:
                        first_width, first_line = len(fields), line_no
                    elif len(fields) != first_width:
                        raise DataFormatError(
                            f"found {len(fields)} whitespace-separated fields, but line {first_line} has "
                            f"{first_width}; with token_column={token_column}, tag_column={tag_column} counted from "
                            "the end, a missing column would take another column's value",
                            path,
                            line_no,
                        )
                tokens.append(fields[token_column])
                tags.append(fields[tag_column])
                token_lines.append(line_no)
    except UnicodeDecodeError as exc:
        raise DataFormatError("invalid UTF-8", path, _first_invalid_utf8_line(path)) from exc
    out.end_sentence(None, False)
    return out
