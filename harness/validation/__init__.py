"""``harness validate``: a fair, multi-seed statistical comparison of evolved programs with their baseline.

Modules, each importing only those before it: ``protocol`` (the users' design as data), ``stats`` (the pure
statistics), ``jobs`` (one training job in a
sandbox; the candidates), ``tuning`` (the hyperparameter search), ``comparison`` (the statistics applied to the
runs), ``plots``, ``report`` (``report.md``), ``pipeline`` (``validate``: the protocol, end to end) and
``commands`` (the command line).
"""
