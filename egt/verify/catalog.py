"""Targeting catalogs: the closed set of entities (segments, interests, keywords, ad ids) a Targeter may output.

Contract:
- An `Entry` has a string `id`, a non-empty `text` (what the model generates) and optional `meta`.
- `Catalog(entries)` validates: not empty, ids unique, texts unique (after whitespace normalisation), texts are
  valid Unicode without control characters. Every violation raises `CatalogError` (a ValueError) naming the
  offending entry, so the CLI prints one clear line.
- `Catalog.load(path)` reads CSV, TSV, JSONL (or JSON list) files; the id and text columns are found by name
  (`id`/`text` first, then common aliases) or given explicitly. Undecodable bytes raise `CatalogError` with the
  line number. `Catalog.from_list` takes strings, (id, text) pairs or dicts.
- `Catalog.demo()` loads the project's packaged demo catalog `data/demo_catalog.tsv`.
- The token-length limit is checked where the tokenizer is known: `egt.verify.trie.TokenTrie.from_catalog`.
"""
from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

ID_COLUMNS = ("id", "entity_id", "unique id", "unique_id", "segment_id", "key")
TEXT_COLUMNS = ("text", "name", "label", "entity", "segment", "interest", "title", "keyword")


class CatalogError(ValueError):
    """A catalog that cannot be used (empty, duplicated, unreadable, badly encoded)."""


@dataclass(frozen=True)
class Entry:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise CatalogError(f"{where}: text must be a string, got {type(text).__name__}")
    text = _norm(text)
    if not text:
        raise CatalogError(f"{where}: empty text")
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs":
            raise CatalogError(f"{where}: text {text[:40]!r} contains an unpaired surrogate (bad encoding)")
        if cat == "Cc":
            raise CatalogError(f"{where}: text {text[:40]!r} contains a control character {ch!r}")
    if "\ufffd" in text:
        raise CatalogError(f"{where}: text {text[:40]!r} contains U+FFFD (it was decoded with errors)")
    return text


class Catalog:
    def __init__(self, entries: Iterable[Entry], name: str = "catalog"):
        self.name = name
        self.entries: list[Entry] = []
        ids: dict[str, int] = {}
        texts: dict[str, int] = {}
        for i, e in enumerate(entries):
            where = f"{name}: entry {i}"
            if not isinstance(e, Entry):
                raise CatalogError(f"{where}: expected an Entry, got {type(e).__name__}")
            eid = str(e.id).strip()
            if not eid:
                raise CatalogError(f"{where}: empty id")
            text = _check_text(e.text, f"{where} (id {eid!r})")
            if eid in ids:
                raise CatalogError(f"{name}: duplicate id {eid!r} (entries {ids[eid]} and {i})")
            if text in texts:
                raise CatalogError(f"{name}: duplicate text {text!r} (entries {texts[text]} and {i})")
            ids[eid], texts[text] = i, i
            self.entries.append(Entry(eid, text, dict(e.meta)))
        if not self.entries:
            raise CatalogError(f"{name}: the catalog is empty")
        self._by_id = ids

    # ---- access ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> Entry:
        return self.entries[i]

    def by_id(self, eid: str) -> Entry:
        return self.entries[self._by_id[eid]]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.entries]

    def __repr__(self) -> str:
        return f"Catalog({self.name!r}, {len(self)} entries)"

    # ---- constructors ------------------------------------------------------------------------------------
    @classmethod
    def from_list(cls, items: Iterable[Any], name: str = "list") -> "Catalog":
        """Strings (id = position), (id, text) pairs, Entry objects or dicts with id/text (other keys -> meta)."""
        entries = []
        for i, it in enumerate(items):
            if isinstance(it, Entry):
                entries.append(it)
            elif isinstance(it, str):
                entries.append(Entry(str(i), it))
            elif isinstance(it, dict):
                entries.append(_entry_from_row(it, None, None, f"{name}: item {i}", default_id=str(i)))
            elif isinstance(it, (tuple, list)) and len(it) == 2:
                entries.append(Entry(str(it[0]), it[1]))
            else:
                raise CatalogError(f"{name}: item {i} must be a string, (id, text) pair or dict, got {it!r:.60}")
        return cls(entries, name=name)

    @classmethod
    def load(cls, path: str | Path, id_col: str | None = None, text_col: str | None = None) -> "Catalog":
        p = Path(path)
        if not p.is_file():
            raise CatalogError(f"{p}: no such catalog file")
        raw = p.read_bytes()
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise CatalogError(f"{p}: line {line} is not valid UTF-8 ({e.reason})") from None
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(content.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise CatalogError(f"{p}: line {n} is not valid JSON ({e.msg})") from None
        elif suffix == ".json":
            try:
                rows = json.loads(content)
            except json.JSONDecodeError as e:
                raise CatalogError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
            if not isinstance(rows, list):
                raise CatalogError(f"{p}: a JSON catalog must be a list of entries")
        elif suffix in (".csv", ".tsv", ".tab", ".txt"):
            delim = "," if suffix == ".csv" else "\t"
            rows = list(csv.DictReader(io.StringIO(content), delimiter=delim))
            if rows and None in rows[0]:
                raise CatalogError(f"{p}: line 2 has more fields than the header")
        else:
            raise CatalogError(f"{p}: unknown catalog format {suffix!r} (use .csv, .tsv, .jsonl or .json)")
        entries = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                row = {"text": row}
            if not isinstance(row, dict):
                raise CatalogError(f"{p}: entry {i} is not an object")
            entries.append(_entry_from_row(row, id_col, text_col, f"{p}: entry {i} (line {i + 2})", default_id=str(i)))
        return cls(entries, name=p.name)

    @classmethod
    def demo(cls) -> "Catalog":
        """The packaged demo catalog (`data/demo_catalog.tsv` beside the package, or inside it when installed)."""
        here = Path(__file__).resolve().parent.parent  # egt/
        for cand in (here.parent / "data" / "demo_catalog.tsv", here / "data" / "demo_catalog.tsv"):
            if cand.is_file():
                return cls.load(cand)
        raise CatalogError("the demo catalog data/demo_catalog.tsv is missing from this installation; "
                           "pass --catalog PATH (CSV/TSV/JSONL with id and text columns)")


def _find(keys: list[str], wanted: str | None, aliases: tuple[str, ...], what: str, where: str) -> str | None:
    low = {k.strip().lower(): k for k in keys if isinstance(k, str)}
    if wanted is not None:
        if wanted in keys:
            return wanted
        if wanted.lower() in low:
            return low[wanted.lower()]
        raise CatalogError(f"{where}: no {what} column {wanted!r} (columns: {', '.join(map(str, keys))})")
    for a in aliases:
        if a in low:
            return low[a]
    return None


def _entry_from_row(row: dict, id_col: str | None, text_col: str | None, where: str, default_id: str) -> Entry:
    keys = list(row.keys())
    tcol = _find(keys, text_col, TEXT_COLUMNS, "text", where)
    if tcol is None:
        raise CatalogError(f"{where}: no text column (looked for {', '.join(TEXT_COLUMNS)}; "
                           f"columns: {', '.join(map(str, keys))})")
    icol = _find(keys, id_col, ID_COLUMNS, "id", where)
    eid = row.get(icol) if icol else None
    eid = default_id if eid is None or str(eid).strip() == "" else str(eid)
    meta = {k: v for k, v in row.items() if k not in (icol, tcol) and k is not None}
    return Entry(eid, row.get(tcol), meta)
