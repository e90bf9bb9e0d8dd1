"""The analysis layer: what is computed from stored rows, and how it is shown.

* :mod:`.compare` — two runs or commits side by side, with significance tests;
* :mod:`.paired` — paired tests against a reference backend, Holm's correction;
* :mod:`.within` — backends of one run against a baseline backend;
* :mod:`.ab` — paired A/B sessions of two revisions;
* :mod:`.changepoints`, :mod:`.regressions` — change points in per-commit series;
* :mod:`.scales` — whether a change is judged as a ratio or a difference;
* :mod:`.summary` — the end-of-run summary; :mod:`.report`, :mod:`.slides` — the HTML report and figures.

Reads rows through :mod:`harness.store`; imports no plugin and runs nothing.
"""
