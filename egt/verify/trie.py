"""A compact token trie over a catalog, stored as flat numpy arrays (no per-node Python objects).

Contract:
- Every catalog entry becomes one root-to-leaf path: its tokens as generated in the answer context followed by
  one end-marker token. The leaf is the end marker; `entry[leaf]` is the entry's index, -1 elsewhere. Because of
  the end marker no entry is a prefix of another, and the leaves are exactly the entries.
- Nodes are numbered breadth first (root = 0), so every parent id is smaller than its children's ids and the
  children of a node are the contiguous range `child_start[n] : child_start[n] + child_count[n]`, sorted by token.
- For the verification trigger and packing the trie also keeps, per node: `height` (edges to its deepest leaf),
  `sub_internal` (internal nodes in its subtree, itself included), and the internal nodes in depth-first
  pre-order (`pre_internal`, `ipos`): the internal nodes strictly below internal node n are
  `pre_internal[ipos[n] + 1 : ipos[n] + sub_internal[n]]`, parents before children.
- Building is vectorised (one lexicographic sort, one pass per depth); `nbytes` counts every array.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .catalog import Catalog, CatalogError

DEFAULT_MAX_TOKENS = 32


@dataclass
class TokenTrie:
    token: np.ndarray        # int32 [N]; -1 at the root
    parent: np.ndarray       # int32 [N]; -1 at the root
    depth: np.ndarray        # uint8 [N]; root 0
    child_start: np.ndarray  # int32 [N]
    child_count: np.ndarray  # int32 [N]
    entry: np.ndarray        # int32 [N]; entry index at leaves, -1 elsewhere
    height: np.ndarray       # uint8 [N]
    sub_internal: np.ndarray  # int32 [N]
    pre_internal: np.ndarray  # int32 [internal nodes]
    ipos: np.ndarray         # int32 [N]; position in pre_internal, -1 for leaves
    end_token: int
    build_seconds: float = 0.0

    # ---- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_sequences(cls, seqs: list[list[int]], end_token: int) -> "TokenTrie":
        """`seqs[i]` are entry i's tokens WITHOUT the end marker (which is appended here)."""
        t0 = time.perf_counter()
        n = len(seqs)
        if n == 0:
            raise CatalogError("cannot build a trie over an empty catalog")
        lens = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=n)
        if lens.min() < 2:
            raise CatalogError(f"entry {int(np.argmin(lens))} has no tokens")
        width = int(lens.max())
        if width > 255:
            raise CatalogError(f"entries of {width - 1} tokens are too long for the trie (max 254)")
        mat = np.full((n, width), -1, dtype=np.int32)
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lens.sum()) - n)
        if flat.size and (flat.min() < 0 or (flat == end_token).any()):
            raise CatalogError("entry tokens must be >= 0 and must not contain the end-marker token")
        rows = np.repeat(np.arange(n), lens - 1)
        cols = np.arange(flat.size) - np.repeat(np.cumsum(lens - 1) - (lens - 1), lens - 1)
        mat[rows, cols] = flat
        mat[np.arange(n), lens - 1] = end_token
        order = np.lexsort(mat.T[::-1])  # column 0 is the primary key; -1 padding sorts first
        mat, lens = mat[order], lens[order]

        tokens, parents, depths, first_row = [np.array([-1], np.int32)], [np.array([-1], np.int32)], \
            [np.array([0], np.uint8)], [np.array([-1], np.int64)]
        entry_leaf = np.full(n, -1, dtype=np.int64)
        prev_ids = np.zeros(n, dtype=np.int64)  # node of each row's prefix so far (root)
        next_id = 1
        for d in range(width):
            valid = lens > d
            col = mat[:, d]
            new = valid.copy()
            same = (col[1:] == col[:-1]) & (prev_ids[1:] == prev_ids[:-1]) & valid[:-1]
            new[1:] &= ~same
            ids = next_id + np.cumsum(new) - 1
            idx = np.nonzero(new)[0]
            tokens.append(col[idx].astype(np.int32))
            parents.append(prev_ids[idx].astype(np.int32))
            depths.append(np.full(idx.size, d + 1, np.uint8))
            first_row.append(idx)
            next_id += idx.size
            ended = valid & (lens == d + 1)
            entry_leaf[ended] = ids[ended]
            prev_ids = np.where(valid, ids, -1)
        token = np.concatenate(tokens)
        parent = np.concatenate(parents)
        depth = np.concatenate(depths)
        nn = token.size
        entry = np.full(nn, -1, dtype=np.int32)
        uniq, counts = np.unique(entry_leaf, return_counts=True)
        if uniq.size != n:
            dup = uniq[counts > 1][0]
            rows_dup = order[np.nonzero(entry_leaf == dup)[0]]
            raise CatalogError(f"entries {int(rows_dup[0])} and {int(rows_dup[1])} tokenize identically")
        entry[entry_leaf] = order.astype(np.int32)

        kids = parent[1:]
        child_start = np.zeros(nn, np.int32)
        child_count = np.zeros(nn, np.int32)
        ar = np.arange(nn)
        lo = np.searchsorted(kids, ar, "left")
        hi = np.searchsorted(kids, ar, "right")
        child_start[:] = lo + 1
        child_count[:] = hi - lo

        internal = child_count > 0
        height = np.zeros(nn, np.int64)
        sub_internal = internal.astype(np.int64)
        level_start = np.searchsorted(depth, np.arange(width + 2))
        for d in range(width, 0, -1):
            sl = slice(level_start[d], level_start[d + 1])
            np.maximum.at(height, parent[sl], height[sl] + 1)
            np.add.at(sub_internal, parent[sl], sub_internal[sl])
        # Depth-first pre-order = order of (first sorted row reaching the node, depth).
        fr = np.concatenate(first_row)
        pre = np.lexsort((depth, fr))
        pre_internal = pre[internal[pre]].astype(np.int32)
        ipos = np.full(nn, -1, np.int32)
        ipos[pre_internal] = np.arange(pre_internal.size, dtype=np.int32)
        return cls(token, parent, depth, child_start, child_count, entry, height.astype(np.uint8),
                   sub_internal.astype(np.int32), pre_internal, ipos, int(end_token),
                   build_seconds=time.perf_counter() - t0)

    @classmethod
    def from_catalog(cls, catalog: Catalog, tokenizer, end_token: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                     leading_space: bool = False) -> "TokenTrie":
        """Tokenize entries as they appear in the answer: right after the assistant header (chat) or after a
        space (plain-text prompts, `leading_space=True`)."""
        texts = [(" " + t) if leading_space else t for t in catalog.texts]
        seqs = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, s in enumerate(seqs):
            if len(s) > max_tokens:
                e = catalog[i]
                raise CatalogError(f"{catalog.name}: entry {e.id!r} ({e.text[:40]!r}) is {len(s)} tokens long; "
                                   f"the limit is {max_tokens}")
        return cls.from_sequences(seqs, end_token)

    # ---- queries -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.token.size)

    @property
    def num_entries(self) -> int:
        return int((self.entry >= 0).sum())

    @property
    def max_depth(self) -> int:
        return int(self.height[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.token, self.parent, self.depth, self.child_start, self.child_count,
                                      self.entry, self.height, self.sub_internal, self.pre_internal, self.ipos))

    def children(self, node: int) -> np.ndarray:
        s = int(self.child_start[node])
        return np.arange(s, s + int(self.child_count[node]))

    def child(self, node: int, tok: int) -> int:
        """The child of `node` with token `tok`, or -1 (binary search: children are sorted by token)."""
        kids = self.token[self.child_start[node]: self.child_start[node] + self.child_count[node]]
        j = int(np.searchsorted(kids, tok))
        return int(self.child_start[node]) + j if j < kids.size and kids[j] == tok else -1

    def walk(self, tokens) -> int:
        """Node reached by a token prefix from the root, or -1 if it leaves the trie."""
        node = 0
        for t in tokens:
            node = self.child(node, int(t))
            if node < 0:
                return -1
        return node

    def allowed(self, tokens) -> list[int]:
        """Tokens that may follow a prefix (empty once it left the trie or reached a leaf)."""
        node = self.walk(tokens)
        return [] if node < 0 else self.token[self.children(node)].tolist()

    def path(self, node: int) -> list[int]:
        """Token ids from the root to `node` (inclusive)."""
        out = []
        while node > 0:
            out.append(int(self.token[node]))
            node = int(self.parent[node])
        return out[::-1]

    def below(self, node: int) -> np.ndarray:
        """Internal nodes strictly below internal node `node`, in pre-order (parents first)."""
        p = int(self.ipos[node])
        if p < 0:
            return np.zeros(0, np.int32)
        return self.pre_internal[p + 1: p + int(self.sub_internal[node])]
