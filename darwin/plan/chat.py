"""The recipe's ``chat_template``: resolve it to Jinja text before anything is written.

A recipe's ``chat_template`` is one of (mergekit's documented forms, plus a parent reference):

* ``auto``: the template most parents share (exact text after stripping; ties go to the model
  named first). When no parent has one, the tokenizer source's files are kept as they are;
* a named template: ``alpaca``, ``chatml``, ``exaone``, ``llama3``, ``mistral`` or ``zephyr``
  (written here from each format's public description);
* a parent of the recipe, or any model folder: that model's template;
* literal Jinja (text containing ``{``), checked by parsing it.

Anything else is a :class:`~darwin.errors.RecipeError` naming the value.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

from darwin.errors import RecipeError

#: named templates; each renders ``messages`` (role, content) and honours ``add_generation_prompt``
NAMED: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
        "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    # Mistral instruct: an optional system message joins the first user turn; roles alternate
    "mistral": (
        "{% set ns = namespace(system='') %}{% if messages and messages[0]['role'] == 'system' %}"
        "{% set ns.system = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
        "{% else %}{% set turns = messages %}{% endif %}{{ bos_token }}{% for message in turns %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('mistral template: after an optional system message, roles must alternate "
        "user/assistant') }}{% endif %}{% if message['role'] == 'user' %}"
        "{{ ' [INST] ' + (ns.system if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"),
    # Alpaca: system text, then "### Instruction:" / "### Input:" / "### Response:" blocks, blank-line separated
    "alpaca": (
        "{% for message in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] | trim }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] | trim }}"
        "{% elif message['role'] == 'user_context' %}{{ '### Input:\\n' + message['content'] | trim }}"
        "{% else %}{{ '### Response:\\n' + message['content'] | trim }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt and (not messages or messages[-1]['role'] != 'assistant') %}"
        "{{ ('\\n\\n' if messages else '') + '### Response:\\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token "
        "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
    # EXAONE: an empty system turn when the conversation has none
    "exaone": (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "{{ '[|system|][|endofturn|]\\n' }}{% endif %}{{ '[|' + message['role'] + '|]' + message['content'] }}"
        "{% if message['role'] == 'user' %}{{ '\\n' }}{% else %}{{ '[|endofturn|]\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"),
}


def read_chat_template(folder: Path) -> str | None:
    """The chat template a model folder ships, or None.

    Looked up as transformers does: ``chat_template.jinja``, then ``chat_template.json``, then the
    ``chat_template`` of ``tokenizer_config.json`` (a list of named templates gives its
    ``default``). Unreadable or malformed files count as no template.
    """
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            value = json.loads((folder / name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):
            value = next((v.get("template") for v in value if isinstance(v, dict) and v.get("name") == "default"),
                         None)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _check_jinja(text: str, where: str) -> str:
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise RecipeError(f"{where}: not a valid Jinja template (line {e.lineno}: {e.message})") from None
    return text


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long to be a path
        return False


def resolve_chat_template(value: str | None, parents: dict[str, Path]) -> str | None:
    """The Jinja text a recipe's ``chat_template`` asks for (None: keep the tokenizer source's).

    Args:
        value: the recipe's ``chat_template``.
        parents: every model the recipe references → its local folder, in the recipe's order.

    Raises:
        RecipeError: a model without a template, invalid Jinja, or a value that is none of the
            forms in the module docstring.
    """
    if value is None:
        return None
    if value == "auto":
        found = [t.strip() for t in (read_chat_template(p) for p in parents.values()) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    if value in NAMED:
        return NAMED[value]
    folder = parents.get(value) or (Path(value).expanduser() if "{" not in value else None)
    if folder is not None and _is_dir(folder):
        text = read_chat_template(folder)
        if text is None:
            raise RecipeError(f"chat_template {value!r}: that model has no chat template "
                              "(chat_template.jinja or tokenizer_config.json)")
        return text
    if "{" in value:
        return _check_jinja(value, "chat_template")
    close = difflib.get_close_matches(value.lower(), [*NAMED, "auto"], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RecipeError(f"chat_template {value!r}: not 'auto', a named template ({', '.join(sorted(NAMED))}), "
                      f"a model folder, or Jinja text{hint}")
