"""Side-by-side benchmarks of hematune (``make bench``; ``QUICK=1`` for a few-minute smoke run).

Benchmarks are measurements, not tests: nothing here asserts a timing. Each
section module measures one claim with the project's real components
(``search.runner.run_search``, ``search.data``, ``models.registry``,
``reports.evaluate``/``reports.release``) and returns a plain dict; ``run``
stores those dicts as JSON and ``report`` renders them into
``reports/bench.md`` with figures under ``reports/bench/``.
"""
