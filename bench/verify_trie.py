"""Token-trie memory and build time at 1k, 10k, 100k and 1M entries (CPU), and DSI semantic-id tries beside them.

Entries are the synthetic phrases of eval/verify_targeting.py (1-4 words drawn from the words of the IAB and IRA
catalogs), tokenized with the default model's tokenizer in the answer context. Reported per size: nodes, internal
nodes, depth, bytes of all trie arrays (`TokenTrie.nbytes`), bytes per entry, tokenization seconds and trie build
seconds (`TokenTrie.from_sequences`, the vectorised build), and for reference the size of the same trie as nested
Python dicts (measured with tracemalloc, up to 100k entries).

  python bench/verify_trie.py --out bench/results/verify_trie.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from egt.verify import TokenTrie  # noqa: E402


def dict_trie_bytes(seqs, end) -> int:
    tracemalloc.start()
    root: dict = {}
    for i, s in enumerate(seqs):
        node = root
        for t in s:
            node = node.setdefault(t, {})
        node[end] = i
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del root
    return size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--semantic", default="10000,100000", help="sizes at which to build semantic-id tries too")
    ap.add_argument("--out", default="bench/results/verify_trie.json")
    a = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from eval.verify_targeting import synthetic_catalog
    from egt.models import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    end = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        t0 = time.perf_counter()
        cat = synthetic_catalog(n)
        t1 = time.perf_counter()
        seqs = tok(cat.texts, add_special_tokens=False)["input_ids"]
        t2 = time.perf_counter()
        trie = TokenTrie.from_sequences(seqs, end)
        row = {"entries": n, "nodes": len(trie), "internal_nodes": int((trie.child_count > 0).sum()),
               "max_depth": trie.max_depth, "trie_bytes": trie.nbytes, "bytes_per_entry": trie.nbytes / n,
               "catalog_s": t1 - t0, "tokenize_s": t2 - t1, "build_s": trie.build_seconds,
               "mean_tokens": sum(map(len, seqs)) / n}
        if n <= 100000:
            row["python_dict_trie_bytes"] = dict_trie_bytes(seqs, end)
        if str(n) in a.semantic.split(","):
            from egt.models import load_model
            from egt.verify.semantic import SemanticTrie, embed_entries

            lm = load_model("default")
            t3 = time.perf_counter()
            emb = embed_entries(lm.model, tok, cat.texts, method="tokens", batch=4096)
            t4 = time.perf_counter()
            st = SemanticTrie.build(cat, lm.model, tok, end, branching=32, embeddings=emb)
            row["semantic"] = {"branching": 32, "embed": "mean token embedding", "embed_s": t4 - t3,
                               "cluster_and_build_s": time.perf_counter() - t4, "nodes": len(st.trie),
                               "max_depth": st.trie.max_depth, "trie_bytes": st.trie.nbytes}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": "CPU (2 shared cores)",
           "command": "python " + " ".join(sys.argv), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
