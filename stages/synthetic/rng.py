"""A seeded random source with cheaper draws for the generator's hot loop.

``random.Random.choice``/``randint``/``shuffle`` go through ``_randbelow`` in Python, which was
the largest single cost of generating rows. These overrides draw from ``random()`` (C code)
instead. They are just as deterministic for a given seed, which is all the generator needs;
the float-to-index bias is below 2**-40 for our sequence sizes.
"""

from __future__ import annotations

import random
from collections.abc import MutableSequence, Sequence
from typing import TypeVar

T = TypeVar("T")


class FastRandom(random.Random):
    def choice(self, seq: Sequence[T]) -> T:
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        return seq[int(self.random() * len(seq))]

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        if stop is None:
            start, stop = 0, start
        if step != 1:
            return super().randrange(start, stop, step)
        if stop <= start:
            raise ValueError(f"empty range for randrange({start}, {stop})")
        return start + int(self.random() * (stop - start))

    def shuffle(self, x: MutableSequence[T]) -> None:  # type: ignore[override]
        rand = self.random
        for i in reversed(range(1, len(x))):
            j = int(rand() * (i + 1))
            x[i], x[j] = x[j], x[i]
