"""BFCL (bfcl-eval) on one model through the project's own server: what ``stages/evaluate.py`` runs.

- ``config``: the ``evaluate`` params section (models, categories, bfcl, server settings).
- ``categories``: BFCL's scoring categories and how its leaderboard groups and weighs them.
- ``server``: the ``python -m serve`` command for a model, and the server run around bfcl.
- ``bfcl``: bfcl-eval's generation and evaluation, inside its own environment (``stages/bfcl_runner.py``).
- ``results``: bfcl's result files: inference errors, and the validity of every returned call.
- ``scores``: bfcl's score files per category, and the group and overall scores over what ran.
- ``metrics``: ``metrics/bfcl/<key>.json`` and ``<key>_categories.csv`` from the two above.
- ``run``: one model's evaluation from start to end.
"""


class EvalError(RuntimeError):
    """The evaluation could not produce trustworthy metrics (server, bfcl or result problems)."""
