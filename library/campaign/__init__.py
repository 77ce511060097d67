"""Campaigns: the whole experiment catalog (A1…F1) as one command, each result held against the seeds' bar.

    catalog.py     the catalog as data: per ID, what, the unit that answers it, its metric, bar and figure
    units.py       the job invocations (units) per budget profile, and what each needs first
    measures.py    reading an ID's number (and its interval) out of its unit's MLflow run
    runner.py      units as drivers of one Ray cluster, tagged in MLflow; done, superseded, interrupted
    schedule.py    run_campaign: dependency order, at most max_parallel at once, progress, resume
    report.py      the report: an MLflow table, a CSV and a self-contained HTML page, from MLflow alone

May import the plumbing (config, runtime, tracking, data's storage); no other domain: a campaign runs the other
domains' jobs as separate processes and reads their results from MLflow.
"""
