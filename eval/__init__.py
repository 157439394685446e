"""Offline evaluation of egt configurations on real advertising data: the seed paper's Table 1 on our model.

Modules: `metrics` (BLEU, METEOR, recall/precision@k, latency), `tasks` (targeting, CSL kg/ts, slogans),
`configs` (the Table 1 configurations and how their models are made), `run` (`egt eval`: one cell or the report,
single-process or under `accelerate launch`), `report` (table1.json, report.md, Pareto plots).
"""
