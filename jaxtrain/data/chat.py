"""Chat templates rendered as transformers renders them, and the assistant's part of a chat.

    chat.render(template, messages, add_generation_prompt=True, bos_token="<s>")
    chat.render_for(tokenizer, messages, add_generation_prompt=True)  # the model's template
    chat.assistant_segments(tokenizer, messages)  # [(text, weighted), ...]: a document

`render` is transformers' `apply_chat_template(tokenize=False)` (5.25, utils/
chat_template_utils.py): the same sandboxed Jinja environment (trim_blocks, lstrip_blocks,
loopcontrols, the {% generation %} tag, `tojson` as json.dumps with ensure_ascii=False,
`raise_exception`, `strftime_now`, its `dict` and `namespace`) and the same variables
(`messages`, `tools` and `documents` None unless given, `add_generation_prompt`, the
special tokens' text, any other keyword). A default system prompt is the template's own
doing. Checked against transformers on five families' templates: tests/data/chat_templates.json,
written by scripts/check_chat_templates.py.

`assistant_segments` marks what the model must learn to write: the rendering of the
messages before an assistant message, with the generation prompt, must begin the rendering
of the conversation through that message; the assistant's span is the rest, up to the end
of that rendering. So it holds the reply, the template's end-of-turn token ('<|im_end|>',
'<|eot_id|>', '</s>') that teaches the model to stop, and whatever the template writes
after it ('\n' in ChatML) before the next message. A template for which this does not hold
(one that rewrites earlier turns once later ones follow) is refused in one line.
"""

from datetime import datetime
import functools
import json
import os

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from jaxtrain.errors import UserError, first_line

ASSISTANT = "assistant"
# Where a message's reasoning may come; transformers fills the first two from any of them.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render(template, messages, *, add_generation_prompt=False, bos_token=None, eos_token=None, **extra):
  """The text `template` (a Jinja chat template) makes of `messages` (a list of {'role',
  'content'} dicts), as transformers' apply_chat_template(tokenize=False) makes it with a
  tokenizer whose bos/eos tokens are these (None: the tokenizer has none)."""
  return _render(template, check_messages(messages), add_generation_prompt,
                 _variables(bos_token, eos_token, extra))


def render_for(tokenizer, messages, *, add_generation_prompt=False, **extra):
  """`render` with the tokenizer's chat template and its bos, eos and pad tokens' text."""
  template, variables = _from_tokenizer(tokenizer, extra)
  return _render(template, check_messages(messages), add_generation_prompt, variables)


def assistant_segments(source, messages, **extra):
  """The document of a conversation: [(text, weighted), ...] whose texts join into its full
  rendering, weighted exactly on each assistant message's span (see the module). `source`
  is a tokenizer (its template and special tokens) or a template (str; give bos_token and
  eos_token in `extra` as for `render`)."""
  if isinstance(source, str):
    template, variables = source, _variables(extra.pop("bos_token", None), extra.pop("eos_token", None), extra)
  else:
    template, variables = _from_tokenizer(source, extra)
  messages = check_messages(messages)
  full = _render(template, messages, False, variables)
  segments, done = [], 0
  for i, message in enumerate(messages):
    if message["role"] != ASSISTANT:
      continue
    before = _render(template, messages[:i], True, variables, before=i)
    through = _render(template, messages[:i + 1], False, variables)
    if not (through.startswith(before) and full.startswith(through)) or len(before) < done:
      raise UserError(f"cannot tell message {i} (assistant) apart for the loss: the chat template's rendering of "
                      f"the messages before it, with the generation prompt, does not begin its rendering of the "
                      f"conversation through it (the template rewrites earlier turns); use a template that only "
                      f"appends to a conversation")
    segments += [(full[done:len(before)], False), (through[len(before):], True)]
    done = len(through)
  segments.append((full[done:], False))
  return [(text, weighted) for text, weighted in segments if text]


def check_messages(messages):
  """`messages` as transformers reads them (keys whose value is None dropped), once each is
  a dict with a str 'role' and 'content'; else one line naming the first bad message."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise UserError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} objects, got "
                    f"{_show(messages)}")
  checked = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict):
      raise UserError(f"message {i} must be an object with 'role' and 'content', got {_show(message)}")
    message = {key: value for key, value in message.items() if value is not None}
    for key in ("role", "content"):
      if key not in message:
        raise UserError(f"message {i} has no '{key}' (it has {', '.join(map(repr, message)) or 'nothing'}); each "
                        f"message needs a 'role' and a 'content'")
      if not isinstance(message[key], str):
        raise UserError(f"message {i}'s '{key}' must be a string, got {type(message[key]).__name__} "
                        f"{_show(message[key])}")
    checked.append(_alias_reasoning(message))
  return checked


def _show(value, limit=60):
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _alias_reasoning(message):
  """As transformers: a reasoning given under any of its names is under 'reasoning_content' and
  'thinking' too (templates read one or the other)."""
  reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
  return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _variables(bos_token, eos_token, extra):
  # transformers passes only the special tokens a tokenizer has: an unset one is undefined
  # in the template (renders as ''), not None (which would render as 'None').
  tokens = {name: value for name, value in (("bos_token", bos_token), ("eos_token", eos_token)) if value is not None}
  return {"tools": None, "documents": None, **tokens, **extra}


def _from_tokenizer(tokenizer, extra):
  template = tokenizer.chat_template
  if template is None:
    path = tokenizer.path
    where = os.path.dirname(path) if os.path.basename(path) in ("tokenizer.json", "tokenizer.model") else path
    raise UserError(f"model {where} has no chat template (no chat_template.jinja, nor a chat_template in its "
                    f"tokenizer_config.json); give plain text, or add the template the model was tuned with")
  pad = tokenizer.token("pad")
  return template, _variables(tokenizer.token("bos"), tokenizer.token("eos"), {**({"pad_token": pad} if pad else {}),
                                                                             **extra})


def _render(template, messages, add_generation_prompt, variables, before=None):
  compiled = _compile(template)
  try:
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
  except _Raised as e:
    raise UserError(f"the chat template refuses these messages: {_one_line(e.message)}") from None
  except Exception as e:  # pylint: disable=broad-except  (a template is the user's code: any error is theirs)
    what = f"the messages before message {before}" if before is not None else "these messages"
    raise UserError(f"the chat template fails on {what}: {type(e).__name__}: {first_line(e)}") from None


def _one_line(text):
  return " ".join(str(text).split())


class _Raised(Exception):
  """A template's own raise_exception('...')."""

  def __init__(self, message):
    super().__init__(message)
    self.message = message


class _Generation(jinja2.ext.Extension):
  """transformers' {% generation %}...{% endgeneration %} (it marks assistant text for its
  masks): rendered as its body, so that templates using it compile."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


class _Namespace(jinja2.utils.Namespace):
  """transformers' namespace: no attribute starting with '_' (CPython's internals)."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument  (Jinja's own signature trick)
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _Namespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore-prefixed attributes on a "
                                            f"namespace, got {name!r}")


class _Dict:
  """transformers' `dict`: a call and fromkeys, nothing else of the type reachable."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
  raise _Raised(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # Jinja's own tojson escapes HTML characters ('<' as '\u003c') and takes no ensure_ascii.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):  # pylint: disable=redefined-builtin  (the name templates call it with)
  return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def _compile(template):
  if not isinstance(template, str):
    raise UserError(f"a chat template is a Jinja string, got {_show(template)}")
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[_Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                     namespace=_Namespace)
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise UserError(f"the chat template does not compile: {_one_line(e.message)} (template line {e.lineno})") from None
