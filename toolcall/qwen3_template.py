"""The Qwen3 family's chat template, written for this project (tests and offline test assets).

It renders what the Qwen3 models were trained on, as their own template does: ChatML turns; tools
listed as JSON lines inside ``<tools></tools>`` in the system turn, with the instruction to answer
``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``; tool results grouped into one user
turn of ``<tool_response>`` blocks; an assistant turn's reasoning as ``<think>\\n...\\n</think>\\n\\n``
before its content, kept only for the turns after the last user message (earlier thinking is
dropped); and the switch ``enable_thinking=False``, which ends the generation prompt with an empty
thinking block so that the model answers at once.

The server renders with the model's own template (``tokenizer.chat_template``); this one stands in
for it where no Qwen3 checkpoint can be downloaded (``stages.hf_assets.build_qwen3_tokenizer``).
"""

from __future__ import annotations

# Every piece of output is a Jinja expression and every tag trims the whitespace around it, so the
# template's own layout adds nothing (transformers renders with trim_blocks and lstrip_blocks).
QWEN3_CHAT_TEMPLATE = r"""
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if has_system -%}{{- messages[0].content + '\n\n' -}}{%- endif -%}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within ' -}}
    {{- '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": ' -}}
    {{- '<args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- elif has_system -%}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- endif -%}
{#- Reasoning is shown only after the last user message (a turn of tool results is not one). -#}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
    {%- if m.role == 'system' and loop.first -%}
    {%- elif m.role == 'user' or m.role == 'system' -%}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
    {%- elif m.role == 'assistant' -%}
        {%- set content = m.content if m.content is string else '' -%}
        {%- set thought = m.reasoning_content if m.reasoning_content is string else '' -%}
        {%- if not thought and '</think>' in content -%}
            {%- set thought = content.split('</think>')[0].split('<think>')[-1] -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- if loop.index0 > ns.last_user and (loop.last or thought) -%}
            {{- '<think>\n' + thought.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}
        {%- else -%}
            {{- content -}}
        {%- endif -%}
        {%- for call in m.tool_calls or [] -%}
            {%- if not loop.first or content -%}{{- '\n' -}}{%- endif -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' -}}
            {%- if fn.arguments is string -%}{{- fn.arguments -}}{%- else -%}{{- fn.arguments | tojson -}}{%- endif -%}
            {{- '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif m.role == 'tool' -%}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
        {{- '\n<tool_response>\n' + m.content + '\n</tool_response>' -}}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}
"""
