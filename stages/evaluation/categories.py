"""BFCL v4's scoring categories and how its leaderboard groups and weighs them (bfcl-eval 2026.3.23)."""

from __future__ import annotations

from typing import Any

# bfcl-eval 2026.3.23 (constants/category_mapping.py) scoring categories, by leaderboard section.
NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
            "irrelevance")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
        "live_relevance")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
WEB_SEARCH = ("web_search_base", "web_search_no_snippet")
MEMORY = ("memory_kv", "memory_vector", "memory_rec_sum")
SCORING_CATEGORIES = NON_LIVE + LIVE + MULTI_TURN + WEB_SEARCH + MEMORY
# web_search calls SerpAPI; memory_vector downloads an embedding model, and the memory categories
# share prerequisite conversations with it. Offline they would all score 0 without saying why.
INTERNET_CATEGORIES = WEB_SEARCH + MEMORY

# BFCL's aggregation (eval_checker/eval_runner_helper.py, generate_leaderboard_csv): a node is
# ("mean", children) for an unweighted mean of its children, or ("weighted", children) for a
# mean weighted by case counts. Leaves are categories.
Node = tuple[str, tuple[Any, ...]]
GROUPS: dict[str, Node] = {
    "non_live": ("mean", (("mean", ("simple_python", "simple_java", "simple_javascript")),
                          "multiple", "parallel", "parallel_multiple")),
    "live": ("weighted", ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")),
    "irrelevance": ("mean", ("irrelevance", "live_irrelevance")),
    "multi_turn": ("mean", MULTI_TURN),
    "agentic": ("mean", (("mean", WEB_SEARCH), ("mean", MEMORY))),
}
OVERALL_WEIGHTS = {"non_live": 10.0, "live": 10.0, "irrelevance": 10.0, "multi_turn": 30.0, "agentic": 40.0}
