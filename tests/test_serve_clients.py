"""Clients nobody on the project wrote, end to end against the server on loopback: the OpenAI Agents
SDK (`openai-agents`: its Responses model and its chat-completions model, `Runner.run` and
`Runner.run_streamed`) and `langchain-openai` (`bind_tools` with a named tool, on both APIs).

The tiny random model calls because ``tool_choice`` forces it; the checks are what a user of each
framework sees: the tool ran with arguments valid for its schema, and the run ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from loopback_server import LoopbackServer as Server

MODEL = "tiny"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Server]:
    srv = Server(["--model", str(tiny_model_dir), "--served-model-name", MODEL, "--max-string-length", "12",
                  "--max-integer-digits", "4", "--default-max-tokens", "96"])
    yield srv
    srv.stop()


def weather_agent(model: Any, calls: list[str]) -> Any:
    from agents import Agent, ModelSettings, function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    # Greedy and one call: the same answer every run, which ends well inside max_tokens. The run ends
    # with the tool's result, so it does not depend on what a random model says next.
    return Agent(name="weather", instructions="Answer with the weather tool.", model=model, tools=[get_weather],
                 model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0,
                                              max_tokens=64),
                 tool_use_behavior="stop_on_first_tool")


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.parametrize("streamed", [False, True])
def test_agents_sdk_runs_a_function_tool(server: Server, api: str, streamed: bool) -> None:
    from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # tracing would post to OpenAI's servers

    async def run() -> tuple[Any, list[str], list[str]]:
        client = AsyncOpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        model_class = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
        calls: list[str] = []
        agent = weather_agent(model_class(model=MODEL, openai_client=client), calls)
        kinds: list[str] = []
        if streamed:
            result = Runner.run_streamed(agent, "What is the weather in Oslo?")
            async for event in result.stream_events():
                kinds.append(event.type)
        else:
            result = await Runner.run(agent, "What is the weather in Oslo?")
        await client.close()
        return result, calls, kinds

    result, calls, kinds = asyncio.run(run())
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert result.final_output == f"sunny in {calls[0]}"
    if streamed:
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    if api == "responses":
        response = result.raw_responses[0]
        tool_calls = [item for item in response.output if item.type == "function_call"]
        assert tool_calls and all(item.status == "completed" and item.name == "get_weather" for item in tool_calls)


@pytest.mark.parametrize("use_responses_api", [False, True])
def test_langchain_bind_tools_with_a_named_tool(server: Server, use_responses_api: bool) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model=MODEL, base_url=server.base + "/v1", api_key="unused", temperature=1.0, max_tokens=64,
                     max_retries=0, use_responses_api=use_responses_api)
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    completed = 0
    for seed in range(3):
        message = bound.bind(seed=seed).invoke("What is the weather in Oslo?") if not use_responses_api else \
            bound.bind(extra_body={"seed": seed}).invoke("What is the weather in Oslo?")
        assert not message.invalid_tool_calls, message.invalid_tool_calls
        for call in message.tool_calls:
            assert call["name"] == "get_weather"
            jsonschema.validate(call["args"], CITY)
            assert get_weather.invoke(call["args"]).startswith("sunny in ")
            completed += 1
    assert completed
