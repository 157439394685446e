"""Catalog loading and validation."""
import json

import pytest

from egt.verify import Catalog, CatalogError, Entry, TokenTrie


def test_from_list_forms():
    c = Catalog.from_list(["Sports", ("x7", "Travel"), {"id": "a", "text": "Pets", "tier": 2}, Entry("e", "Books")])
    assert [e.id for e in c] == ["0", "x7", "a", "e"]
    assert c.by_id("a").meta == {"tier": 2} and c.texts[1] == "Travel" and len(c) == 4


@pytest.mark.parametrize("items,msg", [
    ([], "empty"), (["a", "a"], "duplicate text"), ([("1", "a"), ("1", "b")], "duplicate id"),
    (["  "], "empty text"), (["bad\x07bell"], "control character"), (["ok", 5], "must be a string"),
    ([("1", "caf\ud800")], "surrogate"), ([("1", "x\ufffdy")], "U\\+FFFD"),
])
def test_validation_errors(items, msg):
    with pytest.raises(CatalogError, match=msg):
        Catalog.from_list(items)


def test_load_formats(tmp_path):
    (tmp_path / "c.tsv").write_text("id\tname\tparent\ns1\tRunning\t\ns2\tHiking  boots\ts1\n")
    (tmp_path / "c.csv").write_text('Unique ID,Name\n1,"Travel, budget"\n2,Pets\n')
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "j1", "text": "Music"}) + "\n\n" + json.dumps("Film") + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"label": "Books"}]))
    t = Catalog.load(tmp_path / "c.tsv")
    assert t.texts == ["Running", "Hiking boots"] and t[1].meta == {"parent": "s1"}
    assert Catalog.load(tmp_path / "c.csv").texts == ["Travel, budget", "Pets"]
    j = Catalog.load(tmp_path / "c.jsonl")
    assert [e.id for e in j] == ["j1", "1"] and j.texts == ["Music", "Film"]
    assert Catalog.load(tmp_path / "c.json").texts == ["Books"]
    assert [e.id for e in Catalog.load(tmp_path / "c.tsv", text_col="Name", id_col="parent")] == ["0", "s1"]


def test_load_errors(tmp_path):
    with pytest.raises(CatalogError, match="no such catalog"):
        Catalog.load(tmp_path / "missing.tsv")
    (tmp_path / "bad.tsv").write_bytes(b"id\ttext\n1\tok\n2\t\xff\xfe\n")
    with pytest.raises(CatalogError, match="line 3 is not valid UTF-8"):
        Catalog.load(tmp_path / "bad.tsv")
    (tmp_path / "nocol.tsv").write_text("id\tfoo\n1\tx\n")
    with pytest.raises(CatalogError, match="no text column"):
        Catalog.load(tmp_path / "nocol.tsv")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(CatalogError, match="unknown catalog format"):
        Catalog.load(tmp_path / "x.xml")
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(CatalogError, match="line 2 is not valid JSON"):
        Catalog.load(tmp_path / "b.jsonl")
    (tmp_path / "empty.csv").write_text("id,text\n")
    with pytest.raises(CatalogError, match="empty"):
        Catalog.load(tmp_path / "empty.csv")
    with pytest.raises(CatalogError, match="no text column 'nope'"):
        Catalog.load(tmp_path / "nocol.tsv", text_col="nope")


def test_demo_catalog():
    c = Catalog.demo()
    assert len(c) > 10 and all(e.text for e in c)


class CharTokenizer:
    """One token per character (enough to check the token limit without loading a model)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + ord(ch) % 50 for ch in t] for t in texts]}


def test_token_limit_and_leading_space():
    c = Catalog.from_list(["abc", "a much longer entry"])
    with pytest.raises(CatalogError, match="is 19 tokens long; the limit is 8"):
        TokenTrie.from_catalog(c, CharTokenizer(), end_token=2, max_tokens=8)
    t = TokenTrie.from_catalog(c, CharTokenizer(), end_token=2, leading_space=True)
    assert len(t.path(t.walk(CharTokenizer()([" abc"])["input_ids"][0] + [2]))) == 5
