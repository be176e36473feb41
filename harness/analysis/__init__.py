"""``harness analyze``: post-hoc analysis of OpenEvolve output folders, joined to the ledger.

Pure reading: nothing here imports torch or runs candidate code. The modules, each importing only those
before it: ``runs`` (loading a run and joining it to the ledger), ``measures`` (what is computed from the
loaded runs), ``plots``, ``report`` (report.md and analysis.json) and ``commands`` (the CLI).
"""
