"""Synthetic raw rows, offline and deterministic: a neutral case model (``cases``,
``function_bank``, ``values``, ``chat``, ``rng``) and the generator (``generator``) that renders
its cases through each source kind's writer (``stages/kinds/``)."""
