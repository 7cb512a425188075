"""The per-token rules of one generated sequence (a batch row), shared by every backend.

Both transformers backends run the same rules through :meth:`DecodeRow.next_token` and
:meth:`DecodeRow.ends_after_token`, which is why a request gets the same tokens whether it ran alone
or batched (and the batched tests compare exactly that). In order:

1. before choosing: a cancelled request ends ("cancelled"); a row whose consumer left ends; a row at
   ``max_tokens`` ends ("length"); a grammar that allows only the end of the turn ends the row
   ("stop": that token is counted, no forward pass is needed to emit it);
2. choosing: the token is sampled: greedy below temperature 1e-5, else temperature and top-p with
   the row's own generator (seeded by the request, so a seed reproduces the answer). With a grammar,
   the token the model prefers is checked first (greedy: its few best tokens in order; sampling
   without top-p: the draw) and taken if the grammar allows it; otherwise, and always under top-p,
   the grammar masks the logits (nothing left allowed is an "error") and the token is chosen from
   the masked ones. Both ways choose the same
   token (greedy) or draw from the same distribution (sampling): see :func:`unmasked_choice`;
3. taking the token (:meth:`DecodeRow.take`): it is counted; a stop token ends the row ("stop") and
   is not emitted; the grammar advances by it, and a token it rejects ends the row ("error");
4. after the token is emitted: the last ``repetition_window`` tokens repeating one short cycle end
   the row ("repetition"), and so does reaching ``max_tokens`` ("length").

vLLM samples (and masks) inside its own engine, so its backend uses only steps 3 and 4 for the
tokens it streams back, as a check: with ``sampler`` set, the grammar replays tokens it did not
mask, and a stop token before the grammar is complete is an error, not a finished turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import numpy as np
import torch

from serve.backends.base import GenerationState, SamplingParams
from serve.constraints.base import Matcher

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily
# Check the token the model prefers against the grammar before computing the whole mask (see
# unmasked_choice); the tests switch it off to compare. Greedy rows check their best tokens in
# order, at most this many (best_allowed), before the mask.
CHECK_BEFORE_MASK = True
CHECKED_TOKENS = 4


def seeded_generator(params: SamplingParams) -> torch.Generator:
    """The request's sampling RNG: seeded when the request gives a seed, else from the OS."""
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def _numpy_view(logits: torch.Tensor) -> np.ndarray | None:
    """The logits as a numpy array sharing their memory (CPU, float32, contiguous), else None."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
        return logits.detach().numpy()
    return None


def greedy(logits: torch.Tensor) -> int:
    """The best token, the lowest id among equals (numpy's argmax: 10 us on 152k logits where
    torch's single-threaded one took 140 us; both return the first maximum)."""
    view = _numpy_view(logits)
    return int(view.argmax()) if view is not None else int(torch.argmax(logits))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature <= GREEDY_BELOW:
        return greedy(logits)
    logits = logits / params.temperature
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        drop = cumulative - sorted_probs >= params.top_p
        # Explicitly, because a top_p below float32's range (e.g. 5e-324) rounds to 0 and drops every token.
        drop[0] = False
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def unmasked_choice(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int | None:
    """The token a row would take before any mask, where taking it when the grammar allows it gives
    exactly what masking first would: greedy (the best token, if allowed, is the best allowed one;
    argmax breaks ties by the lowest id either way) and plain temperature sampling (a draw from the
    whole distribution kept when allowed, else a draw from the masked one, is a draw from the masked
    distribution: rejection sampling). Under top-p the masked distribution's nucleus is another set,
    so None: mask first."""
    if params.temperature <= GREEDY_BELOW or params.top_p >= 1.0:
        return sample(logits, params, generator)
    return None


def best_allowed(logits: torch.Tensor, first: int, matcher: Matcher, tries: int) -> int | None:
    """Greedy under a grammar without its mask: the model's ``tries`` best tokens in order (``first``
    is the best), each checked with ``matcher.allows``; the first allowed one, or None (then the
    mask decides). Exact: each next best is the argmax with the refused ones hidden, i.e. the
    tokens in order of logit and then of id, so the first allowed is the lowest-id best allowed
    token, the one the mask and argmax would give. The logits are left as they came."""
    if matcher.allows(first):
        return first
    view = _numpy_view(logits)
    if view is None or tries <= 1:
        return None
    hidden = [(first, view[first])]
    view[first] = -np.inf
    try:
        for _ in range(tries - 1):
            token = int(view.argmax())
            if view[token] == -np.inf:
                return None  # nothing left above -inf: the mask will say whether anything is allowed
            if matcher.allows(token):
                return token
            hidden.append((token, view[token]))
            view[token] = -np.inf
        return None
    finally:
        for token, value in hidden:
            view[token] = value


def best_of(logits: torch.Tensor, tokens: list[int]) -> int | None:
    """The greedy choice among ``tokens`` (ascending ids, the ones a mask allows): the highest logit,
    the lowest id among equals, as argmax over the masked logits gives; None when none is above -inf
    (the mask then reports that nothing is allowed)."""
    if not tokens:
        return None  # before the numpy view: on a cold cache torch's accessors alone cost 60-70 us
    view = _numpy_view(logits)
    values = view if view is not None else logits.detach().float().cpu().numpy()
    size = len(values)
    best, best_value = None, -np.inf
    for token in tokens:
        if token < size and values[token] > best_value:
            best, best_value = token, values[token]
    return best


def repeats_cycle(ids: list[int], window: int, max_period: int = 32) -> bool:
    """True when the last ``window`` ids are one cycle of length <= ``max_period`` repeated."""
    if window <= 0 or len(ids) < window:
        return False
    tail = ids[-window:]
    for period in range(1, min(max_period, window // 2) + 1):
        if tail[period:] == tail[:-period]:
            return True
    return False


class DecodeRow:
    """One sequence's decoding state and rules; ``state`` is filled in for the caller as it runs.

    ``stop_token_ids`` defaults to the request's; ``sampler`` names the engine that samples when it is
    not this process (vLLM), see the module docstring.
    """

    def __init__(self, params: SamplingParams, matcher: Matcher | None, cancel: threading.Event,
                 state: GenerationState, *, stop_token_ids: Iterable[int] | None = None,
                 sampler: str | None = None) -> None:
        self.params = params
        self.matcher = matcher
        self.cancel = cancel
        self.state = state
        self.stop_ids = frozenset(params.stop_token_ids if stop_token_ids is None else stop_token_ids)
        self.sampler = sampler
        self.generator = seeded_generator(params) if sampler is None else None
        self.generated: list[int] = []
        self.abandoned = False  # the consumer closed its iterator (a stop string matched)

    def end(self, reason: str, error: str | None = None) -> None:
        self.state.finish_reason = reason
        if error is not None:
            self.state.error = error

    def cancelled(self) -> bool:
        if self.cancel.is_set():
            self.end("cancelled")
            return True
        return False

    def next_token(self, logits: torch.Tensor) -> int | None:
        """The token this row emits next, chosen from its next-token ``logits`` (1-D; masked in place),
        or None when the row ends without one (steps 1-3)."""
        if self.cancelled() or self.abandoned:
            return None
        if len(self.generated) >= self.params.max_tokens:
            self.end("length")
            return None
        if self.matcher is not None:
            if self.matcher.is_finished():
                self.state.completion_tokens += 1
                self.end("stop")
                return None
            assert self.generator is not None, "a row sampled elsewhere takes its tokens with take()"
            greedy = self.params.temperature <= GREEDY_BELOW
            spent = 0.0
            if CHECK_BEFORE_MASK and greedy:
                # Where the grammar forces text, its first token is the only one the mask leaves: no
                # choice to make. (Sampled rows still draw, so that a seed gives the answers it gave.)
                start = time.perf_counter()
                token = best_of(logits, self.matcher.forced_tokens()[:1])
                if token is not None:
                    self.state.constraint_seconds.append(time.perf_counter() - start)
                    return token if self.take(token) else None
                spent = time.perf_counter() - start
            token = unmasked_choice(logits, self.params, self.generator) if CHECK_BEFORE_MASK else None
            start = time.perf_counter() - spent
            if token is not None:
                if greedy:
                    # Where no check can pass (forced bytes whose last token may still merge), the
                    # model's best tokens are not walked: on 152k logits that is up to 4 cold passes.
                    token = None if self.matcher.refuses_every_check() else best_allowed(
                        logits, token, self.matcher, CHECKED_TOKENS)
                else:
                    token = token if self.matcher.allows(token) else None
                if token is not None:
                    self.state.constraint_seconds.append(time.perf_counter() - start)
                    return token if self.take(token) else None
            self.state.masks += 1
            few = self.matcher.allowed_few() if greedy and CHECK_BEFORE_MASK else None
            token = best_of(logits, few) if few else None
            if token is not None:
                # A greedy row under a mask that allows a few tokens: the best of them, without
                # writing the mask into the logits (on a 152k vocabulary the fill alone is 70 us).
                self.state.constraint_seconds.append(time.perf_counter() - start)
                return token if self.take(token) else None
            self.matcher.apply(logits)
            self.state.constraint_seconds.append(time.perf_counter() - start)
            if not torch.isfinite(logits).any():
                self.end("error", "the grammar left no token allowed")
                return None
        assert self.generator is not None, "a row sampled elsewhere takes its tokens with take()"
        token = sample(logits, self.params, self.generator)
        return token if self.take(token) else None

    def take(self, token: int) -> bool:
        """Count ``token`` and advance the grammar by it (step 3); False when the row ends here and the
        token is not emitted."""
        self.state.completion_tokens += 1
        if token in self.stop_ids:
            if self.sampler is not None and self.matcher is not None and not self.matcher.is_accepting():
                self.end("error", f"{self.sampler} ended the turn before the grammar was complete")
            else:
                self.end("stop")
            return False
        self.generated.append(token)
        if self.matcher is not None:
            start = time.perf_counter()
            accepted = self.matcher.consume(token)
            seconds = time.perf_counter() - start
            if self.sampler is None:
                self.state.constraint_seconds[-1] += seconds  # one entry per token: its mask and its advance
            else:
                self.state.constraint_seconds.append(seconds)
            if not accepted:
                source = f" from {self.sampler}" if self.sampler is not None else ""
                self.end("error", f"the grammar rejected token {token}{source}")
                return False
        return True

    def take_forced(self, limit: int) -> tuple[list[int], bool]:
        """After an emitted token that did not end the row: the tokens the grammar forces next (at
        most ``limit``), each counted and consumed as if sampled, so that a backend can feed them in
        one forward pass instead of one step each. Returns them and whether the row ended among them.

        A forced token is the only one the mask would allow, so a greedy row emits the same tokens
        either way, except where the model would have spelled the forced text in other tokens than
        the tokenizer's (which sampling could also do); the row's next token is then chosen from the
        logits after the last forced one, as usual."""
        if self.matcher is None or self.sampler is not None or limit <= 0:
            return [], False
        start = time.perf_counter()
        forced = self.matcher.forced_tokens()[:limit]
        self.state.constraint_seconds[-1] += time.perf_counter() - start
        taken: list[int] = []
        for token in forced:
            if self.cancelled() or self.abandoned:
                return taken, True
            if len(self.generated) >= self.params.max_tokens:
                self.end("length")
                return taken, True
            self.state.constraint_seconds.append(0.0)  # one entry per token; its advance is added by take()
            if not self.take(token):
                return taken, True
            taken.append(token)
            if self.ends_after_token():
                return taken, True
        return taken, False

    def ends_after_token(self) -> bool:
        """After a token was emitted: whether it was the row's last (step 4)."""
        if repeats_cycle(self.generated, self.params.repetition_window):
            self.end("repetition")
            return True
        if len(self.generated) >= self.params.max_tokens:
            self.end("length")
            return True
        return False
