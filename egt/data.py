"""Data: loaders for the real advertising data sets, the packaged demo data, calibration and held-out text.

Contract:
- `data_dir()` is the shared data directory: `$EGT_DATA_DIR`, else `<repo>/../shared/data`. A missing directory or
  file raises `FileNotFoundError` with one clear line (the CLI turns it into exit code 2).
- Loaders return `datasets.Dataset` objects, read through the `datasets` library:
  - `load_ira_ads()`: IRA Facebook ads, `text` (the ad text) -> `interests` (a cleaned list of strings);
  - `load_csl(task, split)`: CSL keyword (`kg`) and title (`ts`) pairs, `source` -> `target` (+ `keywords`);
  - `load_slogans()`: company description `desc` -> slogan `output`, with `industry`;
  - `load_iab(kind)`: IAB taxonomies as catalog entries `id`, `name`, `parent`, `path` (tier list), `tier`.
- `parse_interests` / `clean_interests` turn one raw IRA targeting string into interests; the loader adds a
  data-set-wide vocabulary so that items that may have been cut by the PDF parser are kept only when they also
  occur somewhere as a complete item.
- `calibration_texts(path_or_None, n, seed)`: ad texts for calibration; None = the packaged demo ads.
- `heldout_texts(n, seed)`: English ad text for perplexity, from the *held-out quarter* of the shared data: a text
  is held out iff sha1(text) mod 4 == 0. `calibration_texts` never returns a held-out text from a shared-data file,
  so calibration and perplexity text are disjoint by construction; the demo ads are self-written and disjoint too.
- Demo data (`demo_catalog.tsv`, `demo_ads.jsonl`) lives in `data/` at the repository root; `demo_dir()` finds it
  there or, in an installed wheel, in `egt/demo/`. `load_demo_catalog()` / `load_demo_ads()` read it.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------------- paths


def data_dir() -> Path:
    """The shared data directory ($EGT_DATA_DIR, else <repo>/../shared/data)."""
    env = os.environ.get("EGT_DATA_DIR")
    d = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
    if not d.is_dir():
        how = "$EGT_DATA_DIR" if env else "the default <repo>/../shared/data"
        raise FileNotFoundError(f"shared data directory not found: {d} (from {how}); set EGT_DATA_DIR to the "
                                f"directory that holds ira_facebook_ads.csv, csl_*.tsv, slogans_valid.csv, iab_*.tsv")
    return d


def shared_file(name: str) -> Path:
    p = data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def demo_dir() -> Path:
    """Directory with the self-written demo data: $EGT_DEMO_DIR, <repo>/data, or the packaged egt/demo."""
    cands = [Path(os.environ["EGT_DEMO_DIR"]).expanduser()] if os.environ.get("EGT_DEMO_DIR") else []
    cands += [REPO_ROOT / "data", Path(__file__).resolve().parent / "demo"]
    for d in cands:
        if (d / "demo_catalog.tsv").is_file() and (d / "demo_ads.jsonl").is_file():
            return d
    raise FileNotFoundError("demo data not found (looked in " + ", ".join(map(str, cands)) + ")")


@contextlib.contextmanager
def _quiet():
    """Silence `datasets`' per-load progress bars; these are small local files."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was:
            datasets.enable_progress_bars()


def _read_table(path: Path, **kw):
    with _quiet() as datasets:
        return datasets.load_dataset("csv", data_files=str(path), split="train", **kw)


# ------------------------------------------------------------------------------------------ held-out partition


def is_heldout(text: str) -> bool:
    """True for the quarter of texts reserved for perplexity (never used for calibration)."""
    return int(hashlib.sha1(text.strip().encode("utf-8")).hexdigest(), 16) % 4 == 0


def is_garbled(text: str) -> bool:
    """Text lost to encoding (the IRA PDFs turned Cyrillic into '?'): mostly question marks, or nothing at all."""
    core = re.sub(r"\s", "", text or "")
    return not core or core.count("?") / len(core) > 0.5


# -------------------------------------------------------------------------------------- IRA interest cleaning

# Labels that end an interests segment: other targeting fields that the PDF text runs into.
_STOP_LABELS = ("Behaviors", "Politics", "School", "Employers", "Job title", "Industry", "Field of study",
                "Interest expansion", "Multicultural Affinity", "Facebook access", "Home Composition", "Connections",
                "Friends of connections", "People who like", "Generation", "Language", "Exclude", "Life events",
                "Parents", "Relationship status", "Education Level", "Work")
_MATCH = r"(?:(?:And\s+)?Must\s+Also\s+Match|so\s+Match|Match)\s*:"
# "People who like X" and "Friends of connections..." are connection targeting, not interests; the PDF text
# sometimes loses their colon, so they end a segment without one.
_SEGMENT_SPLIT = re.compile(r"(" + _MATCH + r"|\bInterests\b\s*:?|\bPeople who like\b|\bFriends of (?:connections|"
                            r"friends|people)\b[^,]*?(?=\s|$)|(?:\b|^)(?:" +
                            "|".join(re.escape(x) for x in _STOP_LABELS) + r")\b(?:\s*\([^)]*\))?\s*:)", re.I)
_FUNCTION_WORDS = {"the", "of", "in", "and", "for", "to", "a", "an", "on", "at", "with", "by", "de", "la", "or", "&"}
# Real interest names that contain a separator; protected before splitting (checked on the IRA data).
_PROTECTED = ("LGBT rights by country or territory", "The Potter's House Church, Dallas")
# An item that is only one of these belongs to the item before it ("Martin Luther King, Jr.").
_SUFFIX_ITEM = re.compile(r"^(?:Jr|Sr|III|II|Inc|Ltd)\.?$|^\d{4}$")
_ABBREV = {"st", "jr", "sr", "mr", "mrs", "ms", "dr", "vs", "inc", "co", "ltd", "u.s", "d.c", "no", "mt", "ft"}


@dataclass(frozen=True)
class Interest:
    text: str
    complete: bool  # False when the PDF surely or likely cut this item (end of a line-truncated block, 'African-')
    last: bool = False  # the last item of its segment: a whole record may have been cut right after it


def _normalize_item(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(\w)- (\w)", r"\1-\2", s)  # "African- American" -> "African-American" (line-break hyphen)
    s = re.sub(r"-{2,}", "-", s)  # "(1954--68)"
    s = re.sub(r"\(\s+", "(", s)
    s = re.sub(r"\s+\)", ")", s)
    s = re.sub(r"(\w)\(", r"\1 (", s)  # "Movement(1954-68)"
    s = s.strip(" ,;:\"'")
    if s.endswith(".") and not re.search(r"(?:^|\s)(?:Jr|Sr|St|Inc|Co|Ltd|Dr|Mr|Mrs)\.$", s):
        s = s[:-1].rstrip()
    return s


def _period_to_comma(seg: str) -> str:
    """The PDF text sometimes reads ',' as '.': 'Black Power. Racial equality'. Keep 'St. Louis', 'Jr.'."""
    seg = re.sub(r"\.\.\s", "., ", seg)  # "Jr.. Black Power"

    def repl(m):
        word = m.group(1)
        if word in ("Jr", "Sr"):  # a name suffix keeps its period: "Martin Luther King, Jr. African-American ..."
            return word + "., "
        if word.lower().rstrip(".") in _ABBREV or (len(word) == 1 and word != "X"):  # initials; "Malcolm X." is not
            return m.group(0)
        return word + ", "

    return re.sub(r"(\S+)\.\s+(?=[A-Z0-9])", repl, seg)


def _split_items(seg: str) -> list[str]:
    marks = {}
    for i, name in enumerate(_PROTECTED):
        key = f"\x00{i}\x00"
        if name in seg:
            seg = seg.replace(name, key)
            marks[key] = name
    seg = _period_to_comma(seg.replace(";", ","))
    parts = []
    for p in re.split(r",|\s+or\s+|\s+or$|^or\s+", seg):
        p = p.strip()
        if _SUFFIX_ITEM.match(p.rstrip(". ")) and parts:
            parts[-1] = f"{parts[-1]}, {p}"
        else:
            parts.append(p)
    out = []
    for p in parts:
        for key, name in marks.items():
            p = p.replace(key, name)
        out.append(p)
    return out


def parse_interests(raw: str | None, truncated_lines: bool | None = None, plain_lead: bool = True) -> list[Interest]:
    """Split one raw IRA targeting string into interests, flagging those the PDF parser may have cut.

    `truncated_lines`: whether each block is only the first line of the original (the `Match: Interests:` layout of
    the `Interests` column); then the last item of every block is uncertain. None infers it from a leading `Match:`.
    `plain_lead`: whether text before the first label is interests (the plain "A, B or C" layout of `Interests`;
    not so in `People_Who_Match`, which labels every field).
    """
    if raw is None:
        return []
    raw = str(raw).strip()
    if not raw or raw.upper() in ("NA", "N/A", "NAN", "NONE"):
        return []
    if truncated_lines is None:
        truncated_lines = bool(re.match(r"^(?:so\s+)?Match\s*:", raw))
    pieces = _SEGMENT_SPLIT.split(raw)
    # pieces alternate: text, label, text, label, ...; a segment is interests if its label is Interests, or if it
    # is the leading text of a string that has no label before it (the plain "A, B or C" layout).
    segments: list[tuple[str, bool]] = []  # (text, followed_by_more)
    label = None
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            label = piece
            continue
        is_interest = (label is None and i == 0 and plain_lead) or (label is not None and
                                                                     label.lower().startswith("interests"))
        if is_interest and piece.strip():
            segments.append((piece, i + 1 < len(pieces)))
    items: list[Interest] = []
    for seg, _ in segments:
        seg_stripped = seg.rstrip()
        ends_cut = bool(re.search(r"(?:[,;\-]|\bor)$", seg_stripped))
        parts = _split_items(seg_stripped)
        # a trailing empty part means the segment ended on a separator: the item before it may continue unseen
        trailing_sep = bool(parts) and parts[-1] == ""
        parts = [p for p in parts if p]
        for j, p in enumerate(parts):
            text = _normalize_item(p)
            if len(text) < 2 or is_garbled(text) or text.upper() == "NA":
                continue
            last = j == len(parts) - 1
            complete = not p.rstrip().endswith("-") and not (last and (truncated_lines or ends_cut or trailing_sep))
            if last and text.split()[-1].lower() in _FUNCTION_WORDS:  # "Immigration, The": the record was cut
                complete = False
            items.append(Interest(text, complete, last))
    return items


def word_prefixes(names) -> set[str]:
    """Lowercased proper word-prefixes of names: 'cop' for 'Cop Block'. A record-final item that is only a prefix
    of a known interest was most likely cut by the PDF parser."""
    out = set()
    for n in names:
        w = n.lower().split()
        out.update(" ".join(w[:i]) for i in range(1, len(w)))
    return out


def _keep(it: Interest, known: set[str] | None, prefixes: set[str]) -> bool:
    key = it.text.lower()
    if known is not None and key in known:
        return True
    if not it.complete:
        return False
    return not (it.last and key in prefixes)


def clean_interests(raw: str | None, known: set[str] | None = None, truncated_lines: bool | None = None,
                    plain_lead: bool = True) -> list[str]:
    """Interests of one raw string, deduplicated in order.

    `known`: lowercased interests seen as certainly complete elsewhere (not last in a segment). Uncertain items are
    kept only when `known` has them; a segment's last item is also dropped when it is merely a word-prefix of a
    known interest ('Cop' of 'Cop Block'). With `known=None`, uncertain items are dropped.
    """
    prefixes = word_prefixes(known) if known else set()
    out, seen = [], set()
    for it in parse_interests(raw, truncated_lines, plain_lead):
        key = it.text.lower()
        if key in seen or not _keep(it, known, prefixes):
            continue
        seen.add(key)
        out.append(it.text)
    return out


# ---------------------------------------------------------------------------------------------------- loaders


def load_ira_ads(path: str | Path | None = None, require_interests: bool = True, dedupe: bool = True):
    """IRA Facebook ads with cleaned interests.

    Columns: `ad_id`, `text` (the ad text), `interests` (list of str), `interests_raw` (the `Interests` field),
    `age`, `gender`, `location`, `clicks`, `impressions`. Interests are parsed from both the `Interests` field and
    the fuller `People_Who_Match` field (which keeps lines that `Interests` lost), merged in order. Rows whose ad
    text is missing or garbled ('?????') are dropped; with `require_interests`, so are rows with no interests;
    with `dedupe`, repeated (text, interests) pairs keep their first row.
    """
    p = _existing(path) if path else shared_file("ira_facebook_ads.csv")
    raw = _read_table(p, keep_default_na=False)
    if "Ad_Text" not in raw.column_names or "Interests" not in raw.column_names:
        raise ValueError(f"{p}: not an IRA ads file (needs columns Ad_Text and Interests)")
    pwm_col = "People_Who_Match" if "People_Who_Match" in raw.column_names else None
    rows = raw.to_list()
    parsed = []
    known: set[str] = set()
    for r in rows:
        its = parse_interests(r["Interests"])
        if pwm_col:
            its += parse_interests(r[pwm_col], truncated_lines=False, plain_lead=False)
        known.update(i.text.lower() for i in its if i.complete and not i.last)
        parsed.append(its)
    prefixes = word_prefixes(known)
    out = {k: [] for k in ("ad_id", "text", "interests", "interests_raw", "age", "gender", "location", "clicks",
                           "impressions")}
    # one spelling per interest: the most frequent casing in the data set ('meme' and 'Meme' are one interest)
    from collections import Counter

    spell = Counter(it.text for its in parsed for it in its)
    canon = {}
    for text, c in sorted(spell.items(), key=lambda kv: -kv[1]):
        canon.setdefault(text.lower(), text)
    seen = set()
    for r, its in zip(rows, parsed):
        text = re.sub(r"\s+", " ", str(r["Ad_Text"] or "")).strip()
        if is_garbled(text):
            continue
        ints, keys = [], set()
        for it in its:
            k = it.text.lower()
            if k not in keys and _keep(it, known, prefixes):
                keys.add(k)
                ints.append(canon[k])
        if require_interests and not ints:
            continue
        sig = (text, tuple(ints))
        if dedupe and sig in seen:
            continue
        seen.add(sig)
        out["ad_id"].append(str(r.get("Ad_ID", "")))
        out["text"].append(text)
        out["interests"].append(ints)
        out["interests_raw"].append(str(r["Interests"] or ""))
        for col, src in (("age", "Age"), ("gender", "Gender"), ("location", "Location")):
            out[col].append(str(r.get(src, "") or "").strip())
        for col, src in (("clicks", "Clicks"), ("impressions", "Impressions")):
            out[col].append(_to_int(r.get(src)))
    import datasets

    return datasets.Dataset.from_dict(out)


def _to_int(v) -> int:
    try:
        return int(float(str(v).replace(",", "")))
    except (TypeError, ValueError):
        return 0


def ira_catalog(ds=None) -> list[dict]:
    """The targeting catalog of the IRA task: every interest in the data set, ids `ira-0001`... by frequency."""
    from collections import Counter

    ds = ds if ds is not None else load_ira_ads()
    counts = Counter(i for ints in ds["interests"] for i in ints)
    ordered = sorted(counts, key=lambda x: (-counts[x], x.lower()))
    return [{"id": f"ira-{n:04d}", "name": name, "count": counts[name]} for n, name in enumerate(ordered, 1)]


CSL_TASKS = {"kg": "keywords", "ts": "title"}


def load_csl(task: str = "kg", split: str = "dev", path: str | Path | None = None):
    """CSL pairs: `source` (a Chinese abstract) -> `target` (keywords joined by '_' for kg, a title for ts).

    kg rows also carry `keywords` (the list). `split` is `dev` or `test`.
    """
    if task not in CSL_TASKS:
        raise ValueError(f"CSL task must be one of {', '.join(CSL_TASKS)}, got {task!r}")
    if split not in ("dev", "test"):
        raise ValueError(f"CSL split must be dev or test, got {split!r}")
    p = _existing(path) if path else shared_file(f"csl_{task}_{split}.tsv")
    ds = _read_table(p, delimiter="\t", column_names=["prefix", "source", "target"], quoting=csv.QUOTE_NONE,
                     keep_default_na=False)
    want = f"to {CSL_TASKS[task]}"
    if len(ds) and not all(x.strip() == want for x in ds["prefix"][:5]):
        raise ValueError(f"{p}: not a CSL {task} file (first column should be {want!r})")
    ds = ds.filter(lambda r: bool(str(r["source"]).strip()) and bool(str(r["target"]).strip()))
    if task == "kg":
        ds = ds.map(lambda r: {"keywords": [k.strip() for k in r["target"].split("_") if k.strip()]})
    return ds


def load_slogans(path: str | Path | None = None):
    """Slogans: `desc` (company description) -> `output` (its real headline/slogan), with `industry`, `company`."""
    p = _existing(path) if path else shared_file("slogans_valid.csv")
    ds = _read_table(p, keep_default_na=False)
    need = {"desc", "output", "industry"}
    if not need <= set(ds.column_names):
        raise ValueError(f"{p}: not a slogans file (needs columns {', '.join(sorted(need))})")
    keep = [c for c in ("desc", "output", "industry", "company", "type") if c in ds.column_names]
    ds = ds.select_columns(keep)
    return ds.filter(lambda r: bool(str(r["desc"]).strip()) and bool(str(r["output"]).strip()))


IAB_FILES = {"audience": "iab_audience_taxonomy_1.1.tsv", "content": "iab_content_taxonomy_3.1.tsv",
             "ad_product": "iab_ad_product_taxonomy_2.0.tsv"}


def load_iab(kind: str = "audience", path: str | Path | None = None):
    """An IAB taxonomy as catalog entries: `id`, `name` (the last tier), `parent` ('' at the root), `path` (the
    tier names from the root), `tier` (1-based depth). Works for the audience, content and ad-product files."""
    if kind not in IAB_FILES:
        raise ValueError(f"IAB taxonomy must be one of {', '.join(IAB_FILES)}, got {kind!r}")
    p = _existing(path) if path else shared_file(IAB_FILES[kind])
    with open(p, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    # find the header row: the one naming "Unique ID"; the files differ in leading columns and banner rows
    head_i = next((i for i, r in enumerate(rows[:5]) if any(c.strip() == "Unique ID" for c in r)), None)
    if head_i is None:
        raise ValueError(f"{p}: not an IAB taxonomy file (no 'Unique ID' header)")
    head = [c.strip() for c in rows[head_i]]
    c_id = head.index("Unique ID")
    c_par = next(i for i, c in enumerate(head) if c.startswith("Parent"))
    tiers = [i for i, c in enumerate(head) if re.fullmatch(r"Tier \d+", c)]
    out = {"id": [], "name": [], "parent": [], "path": [], "tier": []}
    for r in rows[head_i + 1:]:
        r = r + [""] * (len(head) - len(r))
        uid = r[c_id].strip()
        if not uid:
            continue
        path_ = [r[i].strip() for i in tiers if r[i].strip()]
        if not path_:
            continue
        parent = r[c_par].strip()
        out["id"].append(uid)
        out["name"].append(path_[-1])
        out["parent"].append("" if parent == uid else parent)
        out["path"].append(path_)
        out["tier"].append(len(path_))
    # the ad-product file lists some nodes as their own parent (1037 'Aerospace and Defense'): take the parent
    # from the tier path instead
    by_path = {tuple(pth): i for i, pth in zip(out["id"], out["path"])}
    for n, (pid, pth) in enumerate(zip(out["parent"], out["path"])):
        if not pid and len(pth) > 1:
            out["parent"][n] = by_path.get(tuple(pth[:-1]), "")
    import datasets

    return datasets.Dataset.from_dict(out)


# -------------------------------------------------------------------------------------------------- demo data


def load_demo_catalog() -> list[dict]:
    """The demo catalog: [{id, name, parent, path}] from demo_catalog.tsv (path = ' > '-joined tiers)."""
    p = demo_dir() / "demo_catalog.tsv"
    with open(p, newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f, delimiter="\t")]


def load_demo_ads() -> list[dict]:
    """The demo ads: [{text, interests}] from demo_ads.jsonl; interests are names in the demo catalog."""
    p = demo_dir() / "demo_ads.jsonl"
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# -------------------------------------------------------------------------------------- calibration / held-out

_TEXT_KEYS = ("Ad_Text", "ad_text", "text", "ad", "desc", "prompt", "source", "content")


def _texts_from_file(p: Path) -> list[str]:
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if isinstance(obj, str):
                texts.append(obj)
            elif isinstance(obj, dict):
                key = next((k for k in _TEXT_KEYS if isinstance(obj.get(k), str)), None)
                if key is None:
                    raise ValueError(f"{p}:{n}: no text field (one of {', '.join(_TEXT_KEYS)})")
                texts.append(obj[key])
        return texts
    if suffix in (".csv", ".tsv"):
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            return []
        head = [c.strip() for c in rows[0]]
        col = next((head.index(k) for k in _TEXT_KEYS if k in head), None)
        body = rows[1:]
        if col is None:  # no known header (e.g. CSL files): take the column with the longest text on average
            body = rows
            width = max(len(r) for r in body)
            col = max(range(width), key=lambda c: sum(len(r[c]) if c < len(r) else 0 for r in body))
        return [r[col] for r in body if col < len(r)]
    if suffix == ".txt":
        return p.read_text(encoding="utf-8").splitlines()
    raise ValueError(f"{p}: unsupported calibration file type {suffix!r} (use .csv, .tsv, .jsonl or .txt)")


def _in_shared(p: Path) -> bool:
    try:
        return p.resolve().is_relative_to(data_dir().resolve())
    except FileNotFoundError:
        return False


def _sample(texts: list[str], n: int, seed: int) -> list[str]:
    uniq = list(dict.fromkeys(texts))
    rng = random.Random(seed)
    return rng.sample(uniq, min(n, len(uniq)))


def calibration_texts(path: str | Path | None = None, n: int = 32, seed: int = 0) -> list[str]:
    """Up to `n` distinct ad texts for calibration, chosen deterministically by `seed`.

    None uses the packaged demo ads. A path reads a .csv/.tsv (column Ad_Text, text, ad, desc, ... or the longest
    column), .jsonl (objects with such a key, or strings) or .txt (one text per line). Runs of whitespace fold to
    one space, except inside .jsonl texts, which keep their line breaks (a chat transcript's turns are lines).
    Garbled and empty texts are skipped; from a shared-data file, held-out texts (see `is_heldout`) are skipped too.
    """
    if n <= 0:
        raise ValueError(f"calibration sample count must be positive, got {n}")
    if path is None:
        texts = [a["text"] for a in load_demo_ads()]
    else:
        p = _existing(path)
        ws = r"[^\S\n]+" if p.suffix.lower() == ".jsonl" else r"\s+"
        texts = [re.sub(ws, " ", t).strip() for t in _texts_from_file(p)]
        texts = [t for t in texts if not is_garbled(t)]
        if _in_shared(p):
            texts = [t for t in texts if not is_heldout(t)]
        if not texts:
            raise ValueError(f"{p}: no usable calibration texts")
    return _sample(texts, n, seed)


def heldout_texts(n: int = 64, seed: int = 0, min_chars: int = 40) -> list[str]:
    """`n` English ad texts for perplexity: the held-out quarter of the IRA ad texts and the slogan descriptions,
    deterministic for a seed, never returned by `calibration_texts`."""
    if n <= 0:
        raise ValueError(f"held-out sample count must be positive, got {n}")
    ira = _read_table(shared_file("ira_facebook_ads.csv"), keep_default_na=False)["Ad_Text"]
    slog = _read_table(shared_file("slogans_valid.csv"), keep_default_na=False)["desc"]
    pool = []
    for t in list(ira) + list(slog):
        t = re.sub(r"\s+", " ", str(t or "")).strip()
        if len(t) >= min_chars and not is_garbled(t) and is_heldout(t):
            pool.append(t)
    return sorted(_sample(pool, n, seed), key=lambda t: hashlib.sha1(t.encode()).hexdigest())
