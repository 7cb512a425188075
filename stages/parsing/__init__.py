"""Pieces every source kind's normalizer reads raw rows with (the kinds live in ``stages/kinds/``).

- ``json_codec``: the two JSON codecs (stdlib ``json`` and orjson) that give the same values and text;
- ``literals``: python-literal reading (JSON first, then a python repr, never evaluated);
- ``tools``: function names made valid for OpenAI, schemas with python type names fixed, tool lists;
- ``call_list``: ToolACE-style ``[F(a=1), G()]`` call lists;
- ``parsers``: one run's parsers, with caches for the strings that repeat across rows;
- ``conversation``: a normalized row and the builder the normalizers fill it with.
"""
