"""Prometheus metrics, one registry per app so that several apps (tests) never collide."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CONSTRAINT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.1, 0.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("octupus_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("octupus_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("octupus_completion_tokens", "Tokens generated", registry=r)
        self.latency = Histogram("octupus_request_latency_seconds", "End-to-end request latency",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.constraint_time = Histogram("octupus_constraint_seconds_per_token",
                                         "Time the constraint engine spends per generated token",
                                         ["engine"], buckets=_CONSTRAINT_BUCKETS, registry=r)
        self.constraint_masks = Counter("octupus_constraint_masks",
                                        "Generated tokens whose whole grammar mask was computed (the others "
                                        "were the model's preferred token, checked and allowed)", ["engine"],
                                        registry=r)
        self.grammar_compile_time = Histogram("octupus_grammar_compile_seconds",
                                              "Grammar compilation time on a cache miss", ["engine"],
                                              buckets=_CONSTRAINT_BUCKETS, registry=r)
        self.rejections = Counter("octupus_rejected_requests",
                                  "Requests rejected with a 4xx, by reason (error code or type)",
                                  ["reason"], registry=r)
        self.invalid_tool_calls = Counter("octupus_invalid_tool_calls",
                                          "Generated calls that failed validation after generation "
                                          "(never returned to the client as valid)", ["engine"], registry=r)
        self.cancellations = Counter("octupus_cancelled_generations",
                                     "Generations stopped because the client went away", registry=r)
        self.finish_reasons = Counter("octupus_finish_reasons", "Choices by finish reason", ["reason"], registry=r)

    def watch_prefix_cache(self, cache: Any) -> None:
        """Export a backend's prefix-cache counters (read at scrape time)."""
        self.registry.register(_AttributeCollector(cache, PREFIX_CACHE_FIELDS))

    def watch_engine(self, engine_time: Any) -> None:
        """Export a backend's forward-pass time (read at scrape time)."""
        self.registry.register(_AttributeCollector(engine_time, ENGINE_TIME_FIELDS))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# (metric, help, attribute, kind) of the values a backend keeps and /metrics reads at scrape time.
PREFIX_CACHE_FIELDS = (
    ("octupus_prefix_cache_lookups", "Prompts looked up in the prefix cache", "lookups", CounterMetricFamily),
    ("octupus_prefix_cache_hits", "Prompts that reused a cached prefix", "hits", CounterMetricFamily),
    ("octupus_prefix_cache_reused_tokens", "Prompt tokens taken from the prefix cache", "reused_tokens",
     CounterMetricFamily),
    ("octupus_prefilled_tokens", "Prompt tokens run through the model (prefill)", "prefilled_tokens",
     CounterMetricFamily),
    ("octupus_prefix_cache_bytes", "Memory held by the prefix cache", "nbytes", GaugeMetricFamily),
)
ENGINE_TIME_FIELDS = (
    ("octupus_engine_prefill_seconds", "Time in prompt forward passes (prefill)", "prefill_seconds",
     CounterMetricFamily),
    ("octupus_engine_prefills", "Prompt forward passes", "prefills", CounterMetricFamily),
    ("octupus_engine_decode_seconds", "Time in one-token decode steps", "decode_seconds", CounterMetricFamily),
    ("octupus_engine_decode_steps", "Decode steps (one forward pass each)", "decode_steps", CounterMetricFamily),
    ("octupus_engine_decode_rows", "Rows advanced by decode steps (steps x batch)", "decode_rows",
     CounterMetricFamily),
    ("octupus_engine_forced_tokens", "Tokens the grammar forced, fed without a decode step of their own",
     "forced_tokens", CounterMetricFamily),
)


class _AttributeCollector(Collector):
    """Metrics read from an object's attributes when Prometheus scrapes."""

    def __init__(self, source: Any, fields: tuple[tuple[str, str, str, Any], ...]) -> None:
        self.source = source
        self.fields = fields

    def collect(self):  # type: ignore[no-untyped-def]
        for name, documentation, attribute, family in self.fields:
            yield family(name, documentation, value=getattr(self.source, attribute))
