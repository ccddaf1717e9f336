"""``chat_template`` in a recipe: auto, named, a parent reference, literal Jinja; bad values refused before any write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mergekit_reference import merge_both
from transformers import AutoTokenizer

import darwin
from darwin.errors import RecipeError
from darwin.plan.chat import NAMED, read_chat_template

T_ROLE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
T_PIPE = "{% for m in messages %}|{{ m['role'] }}|{{ m['content'] }}{% endfor %}"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def parents(demo, tmp_path_factory):
    """Copies of the demo models: base with T_ROLE, A and B with T_PIPE, C and D without a template."""
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, src, template in (("base", "base", T_ROLE), ("a", "parent_a", T_PIPE), ("b", "parent_b", T_PIPE),
                                ("c", "parent_a", None), ("d", "parent_b", None)):
        out[name] = root / name
        shutil.copytree(demo[src], out[name])
        if template:
            (out[name] / "chat_template.jinja").write_text(template)
    return out


def _merge(models: list[Path], chat_template: str | None, out: Path) -> Path:
    recipe = {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
              "dtype": "float32"}
    if chat_template is not None:
        recipe["chat_template"] = chat_template
    darwin.merge(recipe, out, progress=False, device="cpu")
    return out


def _render(folder: Path) -> str:
    tok = AutoTokenizer.from_pretrained(folder)
    return tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)


def test_auto_takes_the_template_most_parents_share(parents, tmp_path):
    child = _merge([parents["base"], parents["a"], parents["b"]], "auto", tmp_path / "child")
    assert read_chat_template(child) == T_PIPE
    assert _render(child) == "|user|hi"
    assert "auto" not in (child / "chat_template.jinja").read_text()


def test_auto_without_any_parent_template_keeps_the_source_tokenizer(parents, tmp_path):
    child = _merge([parents["c"], parents["d"]], "auto", tmp_path / "child")
    assert read_chat_template(child) is None


def test_named_chatml_renders_chatml(parents, tmp_path):
    child = _merge([parents["base"], parents["a"]], "chatml", tmp_path / "child")
    assert _render(child) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_every_named_template_renders(parents, tmp_path):
    import jinja2

    for name, text in NAMED.items():
        out = jinja2.Environment().from_string(text).render(messages=HI, add_generation_prompt=True,
                                                             bos_token="<s>", eos_token="</s>")
        assert "hi" in out, name


def test_parent_reference_and_literal_jinja(parents, tmp_path):
    # the base's own template wins over the tokenizer source's when named by path
    child = _merge([parents["a"], parents["b"]], str(parents["base"]), tmp_path / "ref")
    assert _render(child) == "<user>hi"
    literal = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    child = _merge([parents["a"], parents["b"]], literal, tmp_path / "literal")
    assert _render(child) == "[hi]"
    # the tokenizer_config copy no longer carries an older template
    assert "chat_template" not in (child / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("value, match", [("chatmlx", "not 'auto', a named template"),
                                          ("{% for m in messages %}", "not a valid Jinja template"),
                                          ("PARENT_C", "has no chat template")])
def test_bad_chat_template_is_refused_before_any_write(parents, tmp_path, value, match):
    value = value.replace("PARENT_C", str(parents["c"]))
    with pytest.raises(RecipeError, match=match):
        _merge([parents["a"], parents["b"]], value, tmp_path / "child")
    assert not (tmp_path / "child").exists()


# ----------------------------------------------------------------------------- parity with mergekit
CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
PARITY = {"auto": "auto", **{n: n for n in ("chatml", "llama3", "mistral", "alpaca", "exaone")},
          "literal": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"}


@pytest.fixture(scope="module")
def mergekit_children(parents, tmp_path_factory):
    """Each PARITY value through mergekit-yaml and darwin (tokenizer_source: base, where mergekit
    applies a chat template)."""
    import json

    recipes = {key: json.dumps({"merge_method": "linear", "base_model": str(parents["base"]),
                                "tokenizer_source": "base", "dtype": "float32", "chat_template": value,
                                "models": [{"model": str(parents[m]), "parameters": {"weight": 1.0}}
                                           for m in ("base", "a", "b")]})
               for key, value in PARITY.items()}
    return merge_both(recipes, tmp_path_factory.mktemp("chat-parity"))


def _renders(folder: Path) -> list[str]:
    tok = AutoTokenizer.from_pretrained(folder)
    return [tok.apply_chat_template(CONVERSATION[:n], tokenize=False, add_generation_prompt=g)
            for n in (2, 4) for g in (False, True)]


@pytest.mark.parametrize("key", ["auto", "chatml", "mistral", "literal"])
def test_chat_template_renders_as_mergekit_renders_it(mergekit_children, key):
    dw, mk = mergekit_children[key]
    assert _renders(dw) == _renders(mk)


#: the format each names, by hand; mergekit 0.1.5's files differ from these in whitespace only
GOLDEN = {
    "llama3": "<|endoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant"
              "<|end_header_id|>\n\n",
    "alpaca": "be brief\n\n### Instruction:\nhi\n\n### Response:\n",
    "exaone": "[|system|]be brief[|endofturn|]\n[|user|]hi\n[|assistant|]",
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_chat_template_whitespace_differs_from_mergekit_on_purpose(mergekit_children, key):
    """mergekit's llama3 puts a newline after every <|eot_id|>, its alpaca drops the blank line
    before the final "### Response:", and its exaone indents every turn; darwin renders the formats."""
    import re

    dw, mk = mergekit_children[key]
    ours, theirs = _renders(dw), _renders(mk)
    assert ours[1] == GOLDEN[key]
    assert ours != theirs
    assert [re.sub(r"\s+", "", r) for r in ours] == [re.sub(r"\s+", "", r) for r in theirs]
