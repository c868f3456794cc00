"""Scoring: MedMax's evaluation rules, robust rules, judge, BiomedCLIP similarity, bootstrap, report.

The stage (`score.stage.score_records`) turns predictions into one scored line per item;
`score.summary.summarise` turns scored lines into the summary (means, CIs, macro average).
"""
