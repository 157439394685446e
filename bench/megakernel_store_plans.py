"""Copy the winner plans of megakernel_search.py result files into the PlanStore (bench/results/plans/).

    python bench/megakernel_store_plans.py search1.json [search2.json ...]
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.megakernel.schedule import MegaPlan  # noqa: E402
from egt.megakernel.search import PlanStore  # noqa: E402

store = PlanStore()
for f in sys.argv[1:]:
    for r in json.loads(Path(f).read_text())["results"]:
        p = MegaPlan.from_dict(r["winner"])
        print(store.put(p), p.measured_ms)
