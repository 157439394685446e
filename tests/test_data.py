"""egt.data: IRA interest cleaning on hand-written cases, loaders on the real files, demo data, errors."""
import json

import pytest

from egt import data
from egt.data import clean_interests, parse_interests


def _shared_or_skip():
    try:
        return data.data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


# ------------------------------------------------------------------------------------------- interest cleaning

@pytest.mark.parametrize("raw, want", [
    ("Automobiles, BMW, Used car or Car dealership", ["Automobiles", "BMW", "Used car", "Car dealership"]),
    # the name with a comma stays whole; the last item after ' or ' is kept in the plain layout
    ("Martin Luther King, Jr., African-American history or Malcolm X",
     ["Martin Luther King, Jr.", "African-American history", "Malcolm X"]),
    # ';' and '. ' read for ',' by the PDF parser; 'St. Louis' and initials survive
    ("Black Power. Racial equality; Social justice or St. Louis",
     ["Black Power", "Racial equality", "Social justice", "St. Louis"]),
    ("Huey P. Newton, Malcolm X. Black (Color)", ["Huey P. Newton", "Malcolm X", "Black (Color)"]),
    ("Martin Luther King, Jr.. Black Power", ["Martin Luther King, Jr.", "Black Power"]),
    ("Martin Luther King, Jr. Stop Racism!!, Black Power", ["Martin Luther King, Jr.", "Stop Racism!!", "Black Power"]),
    # line-break hyphens and spacing debris are repaired
    ("African- American culture, African-American Civil Rights Movement(1954--68) or Self- defense",
     ["African-American culture", "African-American Civil Rights Movement (1954-68)", "Self-defense"]),
    # the year belongs to the item before it
    ("Malcolm X or United States presidential election, 2016",
     ["Malcolm X", "United States presidential election, 2016"]),
    # a real name with ' or ' inside is protected
    ("LGBT rights by country or territory, Lesbian community or Same-sex marriage",
     ["LGBT rights by country or territory", "Lesbian community", "Same-sex marriage"]),
    # other targeting fields after the interests are not interests
    ("Human rights or Malcolm X Behaviors: African American (US)", ["Human rights", "Malcolm X"]),
    ("Sports Behaviors: Facebook access (mobile): all mobile devices Job title: Combat medic", ["Sports"]),
    ("NA", []),
    ("", []),
    (None, []),
    ("??????? or ?????", []),
])
def test_clean_plain_layout(raw, want):
    assert clean_interests(raw) == want


def test_match_layout_marks_line_ends_uncertain():
    raw = "Match: Interests: Martin Luther King, Jr., African-American Civil so Match: Interests: Cop Block or Black"
    items = parse_interests(raw)
    assert [i.text for i in items] == ["Martin Luther King, Jr.", "African-American Civil", "Cop Block", "Black"]
    assert [i.complete for i in items] == [True, False, True, False]
    # without a vocabulary the cut items go; with one, an uncertain item that is known complete elsewhere stays
    assert clean_interests(raw) == ["Martin Luther King, Jr.", "Cop Block"]
    assert clean_interests(raw, known={"black"}) == ["Martin Luther King, Jr.", "Cop Block", "Black"]


def test_trailing_debris():
    # 'African-' is a cut word; a segment ending on a separator leaves its last item uncertain
    assert clean_interests("Pan-Africanism, Black Power, African-") == ["Pan-Africanism", "Black Power"]
    assert clean_interests("Hispanic culture, Mexico,") == ["Hispanic culture"]
    assert clean_interests("Homeless shelter Politics: US politics (liberal) or") == ["Homeless shelter"]
    # a record cut after a function word
    assert clean_interests("Immigration, The") == ["Immigration"]


def test_prefix_of_known_interest_is_dropped_at_record_end():
    # 'Cop' ends the record and is only the start of the known 'Cop Block'
    known = {"cop block", "stop police brutality"}
    assert clean_interests("Stop Police Brutality or Cop", known=known) == ["Stop Police Brutality"]
    assert clean_interests("Stop Police Brutality or Cop Block", known=known) == ["Stop Police Brutality", "Cop Block"]


def test_people_who_match_layout():
    raw = (" Interests: Veterans or Supporting Our Veterans And Must Also Match: Employers: U.S. Army Reserve, "
           "Job title: Veteran")
    assert clean_interests(raw, truncated_lines=False, plain_lead=False) == ["Veterans", "Supporting Our Veterans"]
    assert clean_interests(" People who like Black Matters. Friends of connections: Friends of people",
                           truncated_lines=False, plain_lead=False) == []


def test_dedupe_case_insensitive():
    assert clean_interests("Meme, meme or Humour") == ["Meme", "Humour"]


# -------------------------------------------------------------------------------------------- real data files

def test_ira_loader():
    _shared_or_skip()
    ds = data.load_ira_ads()
    assert {"text", "interests", "interests_raw"} <= set(ds.column_names)
    assert len(ds) > 1500
    assert all(ds["interests"]) and all(t and not data.is_garbled(t) for t in ds["text"])
    flat = [i for ints in ds["interests"] for i in ints]
    assert "Martin Luther King, Jr." in flat and "Black (Color)" in flat
    for i in flat:  # no debris survives
        assert "Match:" not in i and "Interests:" not in i and not i.endswith("-") and i.strip() == i
        assert " or " not in i or i == "LGBT rights by country or territory"
    cat = data.ira_catalog(ds)
    names = [c["name"] for c in cat]
    assert len(names) == len(set(n.lower() for n in names)) > 300
    assert cat[0]["count"] >= cat[-1]["count"]


def test_csl_loaders():
    _shared_or_skip()
    kg = data.load_csl("kg", "dev")
    assert len(kg) == 1000 and {"source", "target", "keywords"} <= set(kg.column_names)
    assert kg[0]["keywords"] == kg[0]["target"].split("_") and len(kg[0]["keywords"]) >= 2
    ts = data.load_csl("ts", "test")
    assert len(ts) == 1000 and ts[0]["source"] and ts[0]["target"] and "keywords" not in ts.column_names
    with pytest.raises(ValueError, match="CSL task"):
        data.load_csl("xx")
    with pytest.raises(ValueError, match="not a CSL kg"):
        data.load_csl("kg", path=data.shared_file("csl_ts_dev.tsv"))


def test_slogans_loader():
    _shared_or_skip()
    ds = data.load_slogans()
    assert len(ds) > 5000 and {"desc", "output", "industry"} <= set(ds.column_names)
    assert len(set(ds["industry"])) > 100
    assert all(d.strip() and o.strip() for d, o in zip(ds["desc"][:200], ds["output"][:200]))


@pytest.mark.parametrize("kind, rows", [("audience", 1558), ("content", 704), ("ad_product", 583)])
def test_iab_loaders(kind, rows):
    _shared_or_skip()
    ds = data.load_iab(kind)
    assert abs(len(ds) - rows) <= 5, len(ds)
    ids = set(ds["id"])
    assert all(p == "" or p in ids for p in ds["parent"])  # every parent is an entry
    for r in ds.select(range(50)):
        assert r["name"] == r["path"][-1] and r["tier"] == len(r["path"])
    roots = [r for r in ds if r["parent"] == ""]
    assert roots and all(r["tier"] == 1 for r in roots)


def test_missing_files_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EGT_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="shared data directory not found.*EGT_DATA_DIR"):
        data.load_slogans()
    monkeypatch.setenv("EGT_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data file not found.*ira_facebook_ads.csv"):
        data.load_ira_ads()
    with pytest.raises(FileNotFoundError, match="data file not found"):
        data.calibration_texts(tmp_path / "missing.csv")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an IRA ads file"):
        data.load_ira_ads(bad)
    with pytest.raises(ValueError, match="not an IAB taxonomy"):
        data.load_iab("audience", path=bad)


# ---------------------------------------------------------------------------------------- demo / calibration

def test_demo_data():
    cat = data.load_demo_catalog()
    assert 150 <= len(cat) <= 300
    names = {c["name"] for c in cat}
    ids = {c["id"] for c in cat}
    assert len(ids) == len(cat) and all(c["parent"] == "" or c["parent"] in ids for c in cat)
    ads = data.load_demo_ads()
    assert len(ads) >= 60
    for a in ads:
        assert a["text"] and 1 <= len(a["interests"]) <= 4 and set(a["interests"]) <= names


def test_calibration_texts(tmp_path):
    demo = data.calibration_texts(None, n=8, seed=0)
    assert len(demo) == 8 and demo == data.calibration_texts(None, n=8, seed=0)
    assert demo != data.calibration_texts(None, n=8, seed=1)
    assert len(data.calibration_texts(None, n=10_000)) == len(data.load_demo_ads())
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "ad one"}) + "\n" + json.dumps("ad two") + "\n")
    assert sorted(data.calibration_texts(tmp_path / "a.jsonl", n=5)) == ["ad one", "ad two"]
    # chat transcripts in .jsonl keep their line breaks (runs of spaces still fold); other formats fold them
    (tmp_path / "chat.jsonl").write_text(json.dumps("<|im_start|>user\nbuy  shoes?<|im_end|>\n<|im_start|>") + "\n")
    assert data.calibration_texts(tmp_path / "chat.jsonl") == ["<|im_start|>user\nbuy shoes?<|im_end|>\n<|im_start|>"]
    (tmp_path / "a.txt").write_text("first ad\n\n?????\nsecond ad\n")
    assert sorted(data.calibration_texts(tmp_path / "a.txt", n=5)) == ["first ad", "second ad"]
    (tmp_path / "a.csv").write_text("id,Ad_Text\n1,hello there\n2,buy now\n")
    assert sorted(data.calibration_texts(tmp_path / "a.csv", n=5)) == ["buy now", "hello there"]
    (tmp_path / "a.tsv").write_text("to title\ta long abstract text here\tshort\n")  # headerless: longest column
    assert data.calibration_texts(tmp_path / "a.tsv", n=5) == ["a long abstract text here"]
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported"):
        data.calibration_texts(tmp_path / "a.xml")
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        data.calibration_texts(tmp_path / "b.jsonl")
    with pytest.raises(ValueError, match="positive"):
        data.calibration_texts(None, n=0)


def test_heldout_disjoint_from_calibration():
    _shared_or_skip()
    held = data.heldout_texts(n=40, seed=0)
    assert len(held) == 40 and held == data.heldout_texts(n=40, seed=0)
    assert all(data.is_heldout(t) for t in held)
    cal = data.calibration_texts(data.shared_file("ira_facebook_ads.csv"), n=400, seed=0)
    cal += data.calibration_texts(data.shared_file("slogans_valid.csv"), n=400, seed=0)
    assert len(cal) == 800 and not set(cal) & set(held)
    assert not any(data.is_heldout(t) for t in cal)
