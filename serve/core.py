"""What both endpoints share: one call that turns an endpoint's inputs into a prepared request
(conversation rules, tool checks, prompt, grammar), the constrained generation of one choice as a
stream of events (:mod:`serve.events`), validation of every call, and the generation workers.

A request flows one way: endpoint (request -> :class:`serve.inputs.GenerationInputs`) ->
:meth:`ServingCore.prepare` -> :meth:`ServingCore.stream` or :meth:`ServingCore.collect` -> the
endpoint writes the events out. Streaming and non-streaming answers consume the same event stream
(the non-streaming path just assembles it), which is why, for the same request and seed, both give
the same result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from fastapi.responses import JSONResponse

from serve.backends.base import Backend, GenerationState, SamplingParams
from serve.constraints.base import ConstraintEngine, GrammarError, GrammarSpec, JsonLimits, ReasoningSpec, ToolGrammar
from serve.constraints.schema import bound_schema, check_answer_schema, check_schema
from serve.conversation import normalize_messages
from serve.errors import APIError, BadRequest, InvalidToolCall, NotFound, error_response
from serve.events import ArgsDelta, CallStart, ContentDelta, Event, Failed, Finished, ReasoningDelta
from serve.formats import TOOL_NAME_RE, ToolFormat
from serve.inputs import GenerationInputs, ResponseFormat, ToolChoice
from serve.limits import SchemaLimits, check_tool_limits
from serve.metrics import Metrics
from toolcall.arguments import loads_strict
from toolcall.parser import ParsedOutput, held_prefix, parse_text_turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    aliases: tuple[str, ...] = ()  # further names accepted in requests (e.g. BFCL's model names)
    default_max_tokens: int = 1024
    # For a request that sets no max_tokens: a text answer ends after this many tokens (0 = off).
    # Every format's grammar lets no call follow text, so past this point the answer can only be
    # more text: an evaluation that scores calls (BFCL sends no max_tokens) loses nothing by it.
    default_max_text_tokens: int = 0
    repetition_window: int = 64
    limits: JsonLimits = field(default_factory=JsonLimits)
    api_key: str | None = None
    max_request_bytes: int = 4 * 1024 * 1024  # larger bodies get 413 (0 = unlimited)
    schema_limits: SchemaLimits = field(default_factory=SchemaLimits)
    # Reasoning formats: most thinking tokens of a request that sets no effort (0 = thinking off).
    reasoning_budget: int = 1024


# A request's reasoning effort as a share of the server's budget ("none" turns thinking off).
EFFORT_SHARE = {"minimal": 0.125, "low": 0.25, "medium": 0.5, "high": 1.0, "xhigh": 2.0, "max": 4.0}


@dataclass
class Prepared:
    """A request turned into what generation needs."""

    prompt_ids: list[int]
    tools: dict[str, dict[str, Any]]  # name -> the client's original schema (used for validation)
    compiled: Any | None  # the engine's compiled grammar, or None for unconstrained chat
    calls_allowed: bool
    sampling: SamplingParams
    stop: list[str]
    text_cap: int = 0  # tokens after which a text answer ends ("length"); 0 = none
    answer_schema: dict[str, Any] | None = None  # response_format: the client's schema a text answer must meet
    reasoning: ReasoningSpec | None = None  # the thinking block before the answer, when thinking is on
    close_id: int = -1  # the token that ends the thinking block


@dataclass
class SentCall:
    """What a choice's events have said so far about one call."""

    id: str
    arguments_sent: int = 0  # characters of the arguments already sent as ArgsDelta
    validated: bool = False  # complete and checked against its tool's schema


# ------------------------------------------------------------------ validation


def validate_call(name: str | None, arguments: str, tools: dict[str, dict[str, Any]]) -> str | None:
    """None if the call is valid, else what is wrong with it."""
    if name is None or name not in tools:
        return f"function name {name!r} is not one of the offered tools"
    try:
        args = loads_strict(arguments)
    except ValueError as exc:
        return f"arguments of '{name}' are not valid JSON ({exc}): {arguments[:200]!r}"
    if not isinstance(args, dict):
        return f"arguments of '{name}' are not a JSON object"
    problem = schema_problem(args, tools[name])
    return f"arguments of '{name}' fail the schema at {problem}" if problem else None


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """``"<where>: <message>"`` of the first error of ``value`` against ``schema``, or None if it is valid."""
    errors = sorted(jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(
        schema).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return None
    where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
    return f"{where}: {errors[0].message}"


def validate_answer(text: str, schema: dict[str, Any]) -> str | None:
    """None if a structured answer is one JSON value valid against ``schema``, else what is wrong."""
    try:
        problem = schema_problem(loads_strict(text), schema)
    except RecursionError:
        return "the answer is nested too deeply to read"
    except ValueError as exc:
        return f"the answer is not valid JSON ({exc}): {text[:200]!r}"
    return f"the answer fails the response_format schema at {problem}" if problem else None


# ------------------------------------------------------------------ the service


class ServingCore:
    def __init__(self, backend: Backend, fmt: ToolFormat, engine: ConstraintEngine, config: ServerConfig,
                 metrics: Metrics | None = None) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.fmt = fmt
        self.engine = engine
        self.config = config
        self.metrics = metrics or Metrics()
        if getattr(backend, "prefix_cache", None) is not None:
            self.metrics.watch_prefix_cache(backend.prefix_cache)
        if getattr(backend, "engine_time", None) is not None:
            self.metrics.watch_engine(backend.engine_time)
        self.special_pieces = fmt.special_pieces()
        self.stop_token_ids = fmt.stop_token_ids()
        # One worker per generation the backend can run at once (1 for the sequential transformers
        # backend): the rest queue up in arrival order instead of competing for the cores.
        self.executor = ThreadPoolExecutor(max_workers=max(1, int(getattr(backend, "max_concurrency", 1))),
                                           thread_name_prefix="generate")

    # -------------------------------------------------------------- preparation

    async def prepare(self, inputs: GenerationInputs) -> Prepared:
        """Check ``inputs`` and turn them into what generation needs, off the event loop (templating,
        tokenising and grammar compilation take milliseconds to seconds); raises the request's APIError."""
        return await asyncio.to_thread(self._prepare, inputs)

    def check_model(self, model: str) -> None:
        if model != self.config.model_name and model not in self.config.aliases:
            raise NotFound(f"The model '{model}' does not exist; this server serves '{self.config.model_name}'",
                           param="model", code="model_not_found")

    def _check_tools(self, tools: list[dict[str, Any]], choice: ToolChoice) -> dict[str, dict[str, Any]]:
        """Each tool's checked schema by name; a 400 for a bad name, schema or choice."""
        schemas: dict[str, dict[str, Any]] = {}
        if len(tools) > self.config.schema_limits.max_tools:
            raise BadRequest(f"{len(tools)} tools given; at most {self.config.schema_limits.max_tools} are allowed",
                             param="tools", code="too_many_tools")
        for i, tool in enumerate(tools):
            name = tool["function"]["name"]
            where = f"tools[{i}] '{name}'"
            if not TOOL_NAME_RE.match(name):
                raise BadRequest(f"tools[{i}]: invalid function name {name!r} (letters, digits, _ . - ; "
                                 "at most 64)", param="tools")
            if name in schemas:
                raise BadRequest(f"{where}: duplicate function name", param="tools")
            check_tool_limits(tool["function"].get("parameters"), where, self.config.schema_limits)
            schemas[name] = check_schema(tool["function"].get("parameters"), where)
        if choice.mode in ("required", "named") and not tools:
            raise BadRequest(f"tool_choice '{choice.name or choice.mode}' needs tools", param="tool_choice")
        if choice.mode == "named" and choice.name not in schemas:
            raise BadRequest(f"tool_choice names function '{choice.name}', which is not among the tools",
                             param="tool_choice")
        return schemas

    def _answer_schema(self, rf: ResponseFormat | None) -> dict[str, Any] | None:
        """The schema a text answer must meet (``response_format``), checked; None for free text."""
        if rf is None:
            return None
        if rf.kind == "json_object":
            return {"type": "object"}
        if rf.schema is None:
            raise BadRequest(f"{rf.label}: a json_schema response format needs a 'schema'", param=rf.param)
        check_tool_limits(rf.schema, rf.label, self.config.schema_limits, param=rf.param)
        return check_answer_schema(rf.schema, rf.label, rf.param)

    def _prepare(self, inputs: GenerationInputs) -> Prepared:
        self.check_model(inputs.model)
        messages = normalize_messages(inputs.messages)
        tools, choice = inputs.tools, inputs.tool_choice
        schemas = self._check_tools(tools, choice)
        answer_schema = self._answer_schema(inputs.response_format)
        calls_allowed = bool(tools) and choice.mode != "none"
        allowed = [choice.name] if choice.mode == "named" else list(schemas) if calls_allowed else []

        # The prompt (which carries the tool schemas) is measured before any grammar is compiled, so the
        # context size also bounds how much schema a request can make the engine compile.
        reasoning = self._reasoning(inputs)
        try:
            text = self.fmt.render(messages, tools, thinking=reasoning is not None)
        except Exception as exc:  # jinja's TemplateError and raise_exception(): the conversation's fault
            raise BadRequest(f"the chat template cannot render this conversation: {exc}", param="messages") from None
        self._refuse_far_too_long(text)
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.backend.max_context - len(prompt_ids)
        if room <= 0:
            raise BadRequest(f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                             f"{self.backend.max_context} tokens", param="messages", code="context_length_exceeded")

        limits = self.config.limits
        if not self.engine.enforces_number_bounds:
            limits = dataclasses.replace(limits, max_integer_digits=0)
        if reasoning is not None and self.fmt.opens_in_prompt(text):
            reasoning = dataclasses.replace(reasoning, open="")
        compiled = None
        allow_text = choice.mode in ("auto", "none")
        if calls_allowed or self.fmt.constrain_chat or tools or answer_schema is not None or reasoning is not None:
            # Every tool's schema must be enforceable, even under tool_choice none: fail closed.
            grammar_tools = tuple(
                ToolGrammar(name=n, schema_json=json.dumps(bound_schema(schemas[n], limits)))
                for n in (allowed if calls_allowed else list(schemas)))
            # With tool_choice required or a named tool the answer is calls only: no schema for text.
            answer_json = (json.dumps(bound_schema(answer_schema, limits))
                           if answer_schema is not None and allow_text else None)
            spec = GrammarSpec(shape=self.fmt.shape, special_pieces=self.special_pieces,
                               tools=grammar_tools, allow_text=allow_text,
                               allow_calls=True, parallel=inputs.parallel_tool_calls and choice.mode != "named",
                               max_whitespace=self.config.limits.max_whitespace, text_schema_json=answer_json,
                               reasoning=reasoning)
            if not calls_allowed:
                # Compile the tools once to prove they are enforceable, then generate text only.
                if grammar_tools:
                    self._compile(dataclasses.replace(spec, allow_text=False, text_schema_json=None))
                spec = dataclasses.replace(spec, tools=(), allow_calls=False, allow_text=True)
                if self.fmt.constrain_chat or tools or answer_json is not None or reasoning is not None:
                    compiled = self._compile(spec, inputs.response_format)
            else:
                compiled = self._compile(spec, inputs.response_format)
        else:
            answer_json = None
        cap = min(inputs.max_tokens or self.config.default_max_tokens, room)
        sampling = SamplingParams(max_tokens=cap,
                                  temperature=1.0 if inputs.temperature is None else inputs.temperature,
                                  top_p=1.0 if inputs.top_p is None else inputs.top_p, seed=inputs.seed,
                                  stop_token_ids=self.stop_token_ids,
                                  repetition_window=self.config.repetition_window)
        # A structured answer is what the client asked for: the cap for stray text does not cut it.
        text_cap = self.config.default_max_text_tokens if not (inputs.max_tokens or answer_json) else 0
        return Prepared(prompt_ids=prompt_ids, tools=schemas, compiled=compiled, calls_allowed=calls_allowed,
                        sampling=sampling, stop=[s for s in inputs.stop if s], text_cap=text_cap,
                        answer_schema=answer_schema if answer_json is not None else None, reasoning=reasoning,
                        close_id=self.tokenizer.convert_tokens_to_ids(reasoning.close) if reasoning else -1)

    def _reasoning(self, inputs: GenerationInputs) -> ReasoningSpec | None:
        """The thinking block of this request: None for a format that does not reason, or when the
        request turns thinking off (``enable_thinking: false``, effort ``none``) or the server does."""
        markers = self.fmt.reasoning
        if markers is None or inputs.thinking is False or inputs.reasoning_effort == "none":
            return None
        share = EFFORT_SHARE.get(inputs.reasoning_effort or "high", 1.0)
        budget = int(self.config.reasoning_budget * share)
        if budget <= 0:
            return None
        return ReasoningSpec(open=markers.open, close=markers.close, separator=markers.separator, budget=budget)

    def _refuse_far_too_long(self, text: str) -> None:
        """Refuse a prompt far over the context from a prefix: tokenizing megabytes takes seconds (8 s for
        2.7 MB on 2 cores), while a prefix that alone overflows the context proves the answer."""
        head_chars = 8 * self.backend.max_context
        if len(text) <= head_chars:
            return
        # Cutting through a word can split it into more tokens than it has in the whole text: a margin.
        head = len(self.tokenizer(text[:head_chars], add_special_tokens=False)["input_ids"]) - 256
        if head > self.backend.max_context:
            raise BadRequest(f"the prompt has more than {head} tokens; this model's context is "
                             f"{self.backend.max_context} tokens", param="messages", code="context_length_exceeded")

    def _compile(self, spec: GrammarSpec, rf: ResponseFormat | None = None) -> Any:
        try:
            return self._compile_timed(spec)
        except GrammarError as exc:
            if spec.text_schema_json is None or rf is None:
                raise
            if exc.param == "response_format":  # the engine named the answer's schema itself
                raise GrammarError(f"{rf.label}: {exc.message}", param=rf.param) from None
            # Which schema the engine could not enforce: try the answer's alone (only on this error path).
            try:
                self._compile_timed(dataclasses.replace(spec, tools=(), allow_calls=False, allow_text=True))
            except GrammarError as answer_exc:
                raise GrammarError(f"{rf.label}: {answer_exc.message}", param=rf.param) from None
            raise

    def _compile_timed(self, spec: GrammarSpec) -> Any:
        compiled = self.engine.compile(spec)
        if self.engine.last_compile_seconds:
            self.metrics.grammar_compile_time.labels(self.engine.name).observe(self.engine.last_compile_seconds)
        return compiled

    # -------------------------------------------------------------- one choice as events (worker thread)

    def _decode(self, ids: list[int], finished: bool) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not finished:
            # A multi-byte character split across tokens decodes to U+FFFD until it is whole.
            text = text.rstrip("\ufffd")
        return text

    def _parse(self, prep: Prepared, text: str, finished: bool) -> ParsedOutput:
        if not prep.calls_allowed:
            return parse_text_turn(self.fmt.shape, text, finished)
        return self.fmt.parse(text, finished)

    def run_choice(self, prep: Prepared, index: int, cancel: threading.Event, incremental: bool) -> Iterator[Event]:
        """Generate choice ``index`` and yield its events; ``incremental`` parses after every token."""
        params = prep.sampling
        if params.seed is not None and index:
            params = dataclasses.replace(params, seed=params.seed + index)
        matcher = self.engine.matcher(prep.compiled) if prep.compiled is not None else None
        state = GenerationState()
        ids: list[int] = []
        sent_content = 0
        sent_calls: list[SentCall] = []
        ended_early: str | None = None  # the finish reason when a stop string or the text cap ended it
        r = prep.reasoning
        # Where the answer starts in ``ids``: after the thinking block's close marker (its separator is
        # cut from the answer's text), or at once for a request without thinking.
        answer_start: int | None = None if r is not None else 0
        sent_reasoning = 0

        def reasoning_diff(final: bool) -> Iterator[Event]:
            """The thinking's new text. It is shown as the family's template writes it back: without
            the newline after the open marker and the one before the close marker (held back until
            the block closes)."""
            nonlocal sent_reasoning
            first = 1 if r is not None and r.open else 0
            text = self._decode(ids[first:answer_start - 1 if answer_start is not None else len(ids)], final)
            text = text[1:] if text.startswith("\n") else text
            text = text[:-1] if text.endswith("\n") else text
            if len(text) > sent_reasoning:
                yield ReasoningDelta(text[sent_reasoning:])
                sent_reasoning = len(text)

        def answer_text(finished: bool) -> str:
            text = self._decode(ids[answer_start:], finished) if answer_start is not None else ""
            if r is not None and answer_start is not None:
                n = 0
                while n < min(len(r.separator), len(text)) and text[n] == r.separator[n]:
                    n += 1
                text = text[n:]
            return text

        def diff(parsed: ParsedOutput, final: bool) -> Iterator[Event]:
            nonlocal sent_content
            if parsed.content is not None:
                visible = parsed.content
                if not final:
                    held = max((held_prefix(visible, s) for s in prep.stop), default=0)
                    visible = visible[: len(visible) - held]
                if len(visible) > sent_content:
                    yield ContentDelta(visible[sent_content:])
                    sent_content = len(visible)
            for i, call in enumerate(parsed.calls):
                if call.name is None:
                    break
                if i == len(sent_calls):
                    sent_calls.append(SentCall(id=f"call_{uuid.uuid4().hex[:24]}"))
                    yield CallStart(index=i, id=sent_calls[i].id, name=call.name)
                sent = sent_calls[i]
                if sent.validated and len(call.arguments) > sent.arguments_sent:
                    # Complete arguments never grow: text after them is the engine's fault.
                    self.metrics.invalid_tool_calls.labels(self.engine.name).inc()
                    raise InvalidToolCall(self.engine.name, f"text after the complete arguments of '{call.name}'")
                if len(call.arguments) > sent.arguments_sent:
                    yield ArgsDelta(index=i, text=call.arguments[sent.arguments_sent:])
                    sent.arguments_sent = len(call.arguments)
                if call.complete and not sent.validated:
                    problem = validate_call(call.name, call.arguments, prep.tools)
                    if problem is not None:
                        self.metrics.invalid_tool_calls.labels(self.engine.name).inc()
                        log.error("invalid tool call from engine %s: %s", self.engine.name, problem)
                        raise InvalidToolCall(self.engine.name, problem)
                    sent.validated = True

        try:
            gen = self.backend.generate(prep.prompt_ids, params, matcher, cancel, state)
            for token in gen:
                ids.append(token)
                if answer_start is None:  # thinking
                    if token == prep.close_id:
                        answer_start = len(ids)
                        yield from reasoning_diff(True)
                    elif incremental:
                        yield from reasoning_diff(False)
                    continue
                at_text_cap = len(ids) - answer_start == prep.text_cap
                if not (incremental or prep.stop or at_text_cap):
                    continue
                parsed = self._parse(prep, answer_text(False), False)
                if parsed.content is not None and not parsed.calls:
                    cut = min((p for p in (parsed.content.find(s) for s in prep.stop) if p >= 0), default=-1)
                    if cut >= 0 or at_text_cap:
                        ended_early = "stop" if cut >= 0 else "length"
                        gen.close()
                        if cut < 0:
                            yield from diff(parsed, True)
                        elif cut > sent_content:
                            yield ContentDelta(parsed.content[sent_content:cut])
                        break
                if incremental:
                    yield from diff(parsed, False)
            thought = 0 if r is None else answer_start if answer_start is not None else len(ids)
            if ended_early is not None:
                self._observe(state, ended_early)
                yield Finished(reason=ended_early, completion_tokens=state.completion_tokens, reasoning_tokens=thought)
                return
            if state.finish_reason == "error":
                self.metrics.invalid_tool_calls.labels(self.engine.name).inc()
                raise InvalidToolCall(self.engine.name, state.error or "generation failed")
            finished = state.finish_reason == "stop"
            if answer_start is None:
                # Generation stopped inside the thinking (max_tokens): no answer, never a call.
                yield from reasoning_diff(True)
            parsed = self._parse(prep, answer_text(True), finished)
            if finished and prep.answer_schema is not None and parsed.content is not None:
                # Checked before the final delta and the finish: a streamed answer fails as a plain one does.
                problem = validate_answer(parsed.content, prep.answer_schema)
                if problem is not None:
                    self.metrics.invalid_tool_calls.labels(self.engine.name).inc()
                    log.error("invalid structured answer from engine %s: %s", self.engine.name, problem)
                    raise InvalidToolCall(self.engine.name, problem, what="structured answer")
            yield from diff(parsed, True)
            complete = sum(1 for sent in sent_calls if sent.validated)
            if finished and not all(call.complete for call in parsed.calls):
                # The grammar ends a turn only after a call's arguments: ending inside one is its fault.
                self.metrics.invalid_tool_calls.labels(self.engine.name).inc()
                raise InvalidToolCall(self.engine.name, "the turn ended inside a tool call")
            if finished and complete:
                reason = "tool_calls"
            elif finished:
                reason = "stop"
            else:
                reason = "length"  # max_tokens, the repetition guard, or a cancelled request
            self._observe(state, reason)
            yield Finished(reason=reason, completion_tokens=state.completion_tokens, complete_calls=complete,
                           reasoning_tokens=thought)
        except APIError as exc:
            self._observe(state, "error")
            yield Failed(error=exc, completion_tokens=state.completion_tokens)

    def _observe(self, state: GenerationState, reason: str) -> None:
        m = self.metrics
        m.completion_tokens.inc(state.completion_tokens)
        m.finish_reasons.labels(reason if state.finish_reason != "cancelled" else "cancelled").inc()
        if state.finish_reason == "cancelled":
            m.cancellations.inc()
        hist = m.constraint_time.labels(self.engine.name)
        for seconds in state.constraint_seconds:
            hist.observe(seconds)
        m.constraint_masks.labels(self.engine.name).inc(state.masks)

    # -------------------------------------------------------------- async bridges

    async def collect(self, prep: Prepared, index: int, is_disconnected: Any) -> list[Event]:
        """Run one choice on the worker and return its events; cancel it if the client leaves."""
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, lambda: list(self.run_choice(prep, index, cancel, False)))
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.25)
            if done:
                return fut.result()
            if await is_disconnected():
                cancel.set()
                log.info("client disconnected; cancelling generation")
                return await fut

    async def stream(self, prep: Prepared, index: int, cancel: threading.Event) -> AsyncIterator[Event]:
        """Events of one choice as they are generated; setting ``cancel`` stops the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def produce() -> None:
            try:
                for ev in self.run_choice(prep, index, cancel, True):
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
            except BaseException as exc:  # surfaced to the consumer rather than lost in the thread
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        fut = loop.run_in_executor(self.executor, produce)
        ended = False
        try:
            while True:
                item = await queue.get()
                if item is done:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Only a consumer that leaves early stops the generation. (Not `fut.done()`: the worker can
            # still be returning after its last event, and the event is shared by a request's choices,
            # so setting it then cancelled the next choice of a streamed n > 1 request.)
            if not ended:
                cancel.set()
        await fut

    def refuse(self, endpoint: str, started: float, error: APIError) -> JSONResponse:
        """The answer to a request refused before generation: counted and timed, in OpenAI's error shape."""
        self.metrics.rejections.labels(error.code or error.type).inc()
        self.observe_request(endpoint, error.status, started)
        return error_response(error)

    def observe_request(self, endpoint: str, status: int, started: float, prompt_tokens: int = 0) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        if prompt_tokens:
            self.metrics.prompt_tokens.inc(prompt_tokens)
