"""Token trie: structure invariants on random sequence sets (hypothesis) and clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egt.verify import CatalogError, TokenTrie

END = 2
seq_sets = st.lists(st.lists(st.integers(3, 12), min_size=1, max_size=6), min_size=1, max_size=40,
                    unique_by=tuple)


def descendants(t, n):
    out, stack = [], [n]
    while stack:
        x = stack.pop()
        for c in t.children(x):
            out.append(int(c))
            stack.append(int(c))
    return out


@settings(max_examples=60, deadline=None)
@given(seq_sets)
def test_trie_invariants(seqs):
    t = TokenTrie.from_sequences(seqs, END)
    assert t.num_entries == len(seqs)
    for i, s in enumerate(seqs):  # every entry is exactly one root-to-leaf path ending in the end marker
        leaf = t.walk(s + [END])
        assert leaf > 0 and t.entry[leaf] == i and t.child_count[leaf] == 0
        assert t.path(leaf) == s + [END]
        assert t.allowed(s) and END in t.allowed(s)
    assert t.walk([99]) == -1 and t.allowed([99]) == []
    assert (t.parent[1:] < np.arange(1, len(t))).all()  # breadth-first: parents first
    n_paths = len({tuple(s[:d]) for s in seqs for d in range(1, len(s) + 1)}) + len(seqs) + 1
    assert len(t) == n_paths  # shared prefixes are shared nodes
    for n in range(len(t)):
        kids = t.children(n)
        assert (t.parent[kids] == n).all() and (np.diff(t.token[kids]) > 0).all()
        desc = descendants(t, n)
        assert t.height[n] == (max(t.depth[desc]) - t.depth[n] if desc else 0)
        internal = [d for d in desc if t.child_count[d] > 0]
        assert t.sub_internal[n] == len(internal) + (t.child_count[n] > 0)
        if t.child_count[n]:
            below = t.below(n).tolist()
            assert sorted(below) == sorted(internal)
            where = {v: i for i, v in enumerate(below)}
            assert all(where[t.parent[v]] < where[v] for v in below if t.parent[v] != n)
        else:
            assert t.below(n).size == 0
    assert t.nbytes == sum(a.nbytes for a in (t.token, t.parent, t.depth, t.child_start, t.child_count, t.entry,
                                               t.height, t.sub_internal, t.pre_internal, t.ipos))


def test_trie_errors():
    with pytest.raises(CatalogError, match="empty"):
        TokenTrie.from_sequences([], END)
    with pytest.raises(CatalogError, match="tokenize identically"):
        TokenTrie.from_sequences([[3, 4], [5], [3, 4]], END)
    with pytest.raises(CatalogError, match="no tokens"):
        TokenTrie.from_sequences([[3], []], END)
    with pytest.raises(CatalogError, match="end-marker"):
        TokenTrie.from_sequences([[3, END]], END)


def test_trie_child_lookup():
    t = TokenTrie.from_sequences([[5, 7], [5, 9, 4], [6]], END)
    a = t.child(0, 5)
    assert t.token[a] == 5 and t.child(a, 8) == -1 and t.token[t.child(a, 9)] == 9
    assert t.max_depth == 4 and t.num_entries == 3


def test_semantic_codes_structure():
    from egt.verify.semantic import semantic_codes

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 10
    emb = np.concatenate([c + rng.normal(size=(30, 8)) for c in centers])  # 4 well separated groups of 30
    codes = semantic_codes(emb, branching=4, seed=0)
    assert len(set(codes)) == len(codes) == 120
    assert all(all(0 <= d < 4 for d in c) for c in codes)
    assert max(len(c) for c in codes) <= 6  # ~log_4(120) + slack for unbalanced splits
    firsts = [{codes[g * 30 + i][0] for i in range(30)} for g in range(4)]
    assert all(len(f) == 1 for f in firsts) and len(set.union(*firsts)) == 4  # each group is one top cluster
    same = semantic_codes(np.zeros((9, 3)), branching=3)  # identical points still get distinct codes
    assert len(set(same)) == 9
    trie = TokenTrie.from_sequences([[10 + d for d in c] for c in codes], END)
    assert trie.num_entries == 120 and int(trie.child_count.max()) <= 4
