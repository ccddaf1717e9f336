"""lm-eval fitness (issue 17): checked before the run, options passed through, a margin score
CMA-ES can follow, quiet output. Tiny demo models and local tasks only (no network)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from helpers import evolve_cfg

import darwin
from darwin.errors import DarwinError

pytest.importorskip("lm_eval")

from darwin.fitness.lm_eval import LmEvalFitness, choice_margin, metric_value, resolve_data_files


def _items(n: int = 8) -> list[dict]:
    return [{"question": f"{i} plus {i} is", "choices": [f" {2 * i}", f" {2 * i + 1}", " no"], "label": 0}
            for i in range(n)]


def write_task(folder, name="tiny_sums", data="items.jsonl", items=None, **extra) -> None:
    """A multiple-choice task YAML in ``folder`` with a *relative* data file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / data).write_text("\n".join(json.dumps(x) for x in (items or _items())))
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
           "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
           "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}], **extra}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def write_gen_task(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gen.jsonl").write_text("\n".join(json.dumps({"q": f"say {i}", "a": str(i)}) for i in range(4)))
    (folder / "tiny_gen.yaml").write_text(yaml.safe_dump({
        "task": "tiny_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "gen.jsonl"}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["\n"], "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))


@pytest.fixture(scope="module")
def model_a(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(demo["parent_a"]).eval(),
            AutoTokenizer.from_pretrained(demo["parent_a"]))


# ---------------------------------------------------------------- pure helpers (hand goldens)
def test_choice_margin_and_metric_scale_by_hand():
    assert choice_margin([-1.0, -3.0, -2.5], [0]) == pytest.approx(1.5)    # gold best: positive
    assert choice_margin([-4.0, -3.0, -2.5], [0]) == pytest.approx(-1.5)   # a distractor wins: negative
    assert choice_margin([-1.0, -2.0], [0, 1]) == 0.0                      # no distractor
    assert metric_value("word_perplexity", math.e ** 3, False) == pytest.approx(-3.0)   # −ln(ppl)
    assert metric_value("word_perplexity", 1e54, False) == pytest.approx(-54 * math.log(10))
    assert metric_value("bits_per_byte", 0.8, False) == -0.8 and metric_value("acc", 0.7, True) == 0.7


def test_relative_data_files_resolve_beside_the_yaml(tmp_path):
    cfg = {"dataset_kwargs": {"data_files": {"test": "a.jsonl", "train": ["b.jsonl", "/abs/c.jsonl"]}}, "x": 1}
    out = resolve_data_files(cfg, tmp_path)
    assert out["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / "a.jsonl"),
                                                   "train": [str(tmp_path / "b.jsonl"), "/abs/c.jsonl"]}
    assert out["x"] == 1 and cfg["dataset_kwargs"]["data_files"]["test"] == "a.jsonl"  # input unchanged


# ---------------------------------------------------------------- fail before the run
@pytest.mark.parametrize("case, match", [
    ("task", "no task 'tiny_sum'.*did you mean tiny_sums"),
    ("include", "include_path .*nope: no such folder"),
    ("data", "task 'broken' cannot be loaded.*missing.jsonl"),
    ("metric", "no metric 'accuracy'; it reports \\['acc'\\]"),
])
def test_bad_lm_eval_fitness_fails_before_the_run(demo, tmp_path, case, match):
    tasks = tmp_path / "tasks"
    write_task(tasks)
    spec = {"tasks": ["tiny_sums"], "include_path": str(tasks), "limit": 2}
    if case == "task":
        spec["tasks"] = ["tiny_sum"]
    elif case == "include":
        spec["include_path"] = str(tmp_path / "nope")
    elif case == "data":
        write_task(tasks, name="broken", data="x.jsonl")
        (tasks / "broken.yaml").write_text((tasks / "broken.yaml").read_text().replace("x.jsonl", "missing.jsonl"))
        spec["tasks"] = ["broken"]
    else:
        spec["metric"] = "accuracy"
    with pytest.raises(DarwinError, match=match):
        darwin.evolve(evolve_cfg(demo, [{"lm_eval": spec}], population=4, generations=1), tmp_path / "run",
                      progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_exits_2_with_one_line_and_no_folder(demo, tmp_path):
    from typer.testing import CliRunner

    from darwin.cli import app

    (tmp_path / "parents.yaml").write_text(yaml.safe_dump(evolve_cfg(
        demo, [{"lm_eval": {"tasks": ["no_such_task_xyz"], "include_path": str(tmp_path)}}], generations=1)))
    res = CliRunner().invoke(app, ["evolve", str(tmp_path / "parents.yaml"), "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "no task 'no_such_task_xyz'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_margin_on_a_non_multiple_choice_task_is_refused(tmp_path):
    write_gen_task(tmp_path / "tasks")
    with pytest.raises(DarwinError, match="score: margin needs a multiple-choice task; 'tiny_gen'"):
        LmEvalFitness(["tiny_gen"], include_path=tmp_path / "tasks", score="margin")


def test_config_rejects_bad_options(demo, tmp_path):
    from darwin.errors import RecipeError

    base = {"tasks": ["t"], "include_path": str(tmp_path)}
    for bad, match in [({"limit": 0}, "limit"), ({"limit": 2.5}, "limit"), ({"metric": {"other": "acc"}}, "other"),
                       ({"fewshot_as_multiturn": True}, "needs apply_chat_template"),
                       ({"num_fewshot": -1}, "num_fewshot"), ({"batch_size": "big"}, "batch_size")]:
        with pytest.raises(RecipeError, match=match):
            darwin.evolve(evolve_cfg(demo, [{"lm_eval": {**base, **bad}}], generations=1), tmp_path / "r",
                          progress=False)


# ---------------------------------------------------------------- data paths, options, output
def test_relative_data_path_works_from_another_folder(tmp_path, monkeypatch, model_a):
    write_task(tmp_path / "tasks")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # lm-eval alone would look for ./items.jsonl here
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=3)
    assert math.isfinite(fit(*model_a))
    assert len(fit.last_samples["tiny_sums"]) == 3


def test_margin_equals_the_models_own_log_likelihoods(tmp_path, model_a):
    """Golden from an independent formula: ℓ(choice) summed from the model's own logits (lm-eval's
    request: context = the question, continuation = target_delimiter " " + the choice)."""
    model, tok = model_a
    write_task(tmp_path / "tasks")
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=4)
    assert fit.scoring("tiny_sums") == "margin"
    items = fit.doc_scores(model, tok)

    def ll(context: str, cont: str) -> float:
        c, w = tok(context, add_special_tokens=False).input_ids, tok(context + cont, add_special_tokens=False).input_ids
        ids = torch.tensor([w])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        return sum(logp[i - 1, w[i]].item() for i in range(len(c), len(w)))

    for it, got in zip(_items(4), items):
        lls = [ll(it["question"], " " + ch) for ch in it["choices"]]
        assert got == pytest.approx(lls[0] - max(lls[1:]), abs=1e-3)
    acc = fit.last_metrics["tiny_sums/acc,none"]  # accuracy is still reported, as lm-eval computes it
    assert acc == pytest.approx(sum(m > 0 for m in items) / 4)


def test_margin_ranks_a_better_model_above_a_worse_one(tmp_path, model_a):
    """Gold = the choice model A prefers (every margin of A is ≥ 0 by construction, its accuracy 1);
    a freshly initialised model of the same shape knows nothing of it."""
    model, tok = model_a
    same_length = [{"question": f"item {i} says", "choices": [" x", " y", " z"], "label": 0} for i in range(8)]
    assert len({len(tok(c, add_special_tokens=False).input_ids) for c in same_length[0]["choices"]}) == 1
    write_task(tmp_path / "probe", name="probe", items=same_length)
    probe = LmEvalFitness(["probe"], include_path=tmp_path / "probe", limit=8)
    probe.doc_scores(model, tok)
    items = []
    for it, smp in zip(same_length, probe.last_samples["probe"]):
        lls = [float(r[0]) for r in smp["filtered_resps"]]
        items.append({**it, "label": max(range(3), key=lambda j: lls[j])})
    write_task(tmp_path / "tasks", items=items)
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks")
    good = fit(model, tok)
    assert fit.last_metrics["tiny_sums/acc,none"] == 1.0
    torch.manual_seed(1)
    worse = type(model)(model.config).eval()
    bad = fit(worse, tok)
    assert good > 0 and bad < good and fit.last_metrics["tiny_sums/acc,none"] < 1.0


def test_options_reach_lm_eval(tmp_path, model_a):
    model, tok = model_a
    write_task(tmp_path / "tasks", items=_items(10))
    write_gen_task(tmp_path / "tasks")
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=0.25, num_fewshot=2, batch_size="auto",
                        system_instruction="SYSTEM-NOTE")
    fit(model, tok)
    smp = fit.last_samples["tiny_sums"]
    assert len(smp) == 3  # ⌈10 · 0.25⌉, lm-eval's rule for a fractional limit
    context = smp[0]["arguments"][0][0] if isinstance(smp[0]["arguments"], list) else \
        smp[0]["arguments"]["gen_args_0"]["arg_0"]
    assert context.count(" plus ") == 3 and "SYSTEM-NOTE" in context  # 2 shots + the question, system text
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        chat = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=1, apply_chat_template=True)
        chat(model, tok)
        args = chat.last_samples["tiny_sums"][0]["arguments"]
        text = json.dumps(args)
        assert "<|user|>" in text and "<|assistant|>" in text
    finally:
        tok.chat_template = None
    gen = LmEvalFitness(["tiny_gen"], include_path=tmp_path / "tasks", limit=1, gen_kwargs={"max_gen_toks": 3})
    gen(model, tok)
    assert "max_gen_toks" in json.dumps(gen.last_samples["tiny_gen"][0]["arguments"], default=str)
    assert gen.scoring("tiny_gen") == "metric" and "tiny_gen/exact_match,none" in gen.last_metrics


def test_lm_eval_output_stays_off_the_console(tmp_path, model_a, capfd):
    write_task(tmp_path / "tasks")
    capfd.readouterr()
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=3)
    fit.log_path = tmp_path / "lm_eval.log"
    fit(*model_a)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "Building contexts for tiny_sums" in (tmp_path / "lm_eval.log").read_text()


def test_evolve_with_lm_eval_keeps_every_metric_and_labels_the_fitness(demo, tmp_path):
    write_task(tmp_path / "tasks")
    cfg = evolve_cfg(demo, [{"lm_eval": {"tasks": ["tiny_sums"], "include_path": str(tmp_path / "tasks"),
                                         "limit": 4}}], population=4, generations=1)
    res = darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False)
    cands = res.history[0]["candidates"]
    assert all(set(c["metrics"]) == {"tiny_sums/acc,none"} for c in cands)
    assert len({c["fitness"] for c in cands}) > 1  # the margin tells candidates apart
    assert (tmp_path / "run" / "lm_eval.log").exists()
    label = json.loads((tmp_path / "run" / "summary.json").read_text())["fitness_labels"]["search"]
    assert label == "lm_eval tiny_sums (auto: choice margin if multiple choice, else first metric, limit 4)"


# ---------------------------------------------------------------- the readable-output items of issue 17
def test_resume_hint_is_the_full_command():
    from darwin.cli import resume_command

    argv = ["/x/bin/darwin", "evolve", "runs/my parents.yaml", "-o", "runs/x", "--force"]
    assert resume_command(argv) == "darwin evolve 'runs/my parents.yaml' -o runs/x --resume"


def test_list_flags_say_they_repeat(demo, tmp_path):
    from typer.testing import CliRunner

    from darwin.cli import app

    res = CliRunner().invoke(app, ["trim-vocab", str(demo["parent_a"]), "-o", str(tmp_path / "t"),
                                   "--corpus", "a.txt", "b.txt"])
    assert res.exit_code == 2 and "repeat it: --corpus b.txt" in res.output and not (tmp_path / "t").exists()
    res = CliRunner().invoke(app, ["golf", str(demo["parent_a"]), "-o", str(tmp_path / "g"), "--text", "a", "b", "c"])
    assert res.exit_code == 2 and "repeat the flag" in res.output and not (tmp_path / "g").exists()


def test_model_card_lists_the_base_apart_and_keeps_local_paths_out_of_metadata(tmp_path):
    from darwin.io.card import write_model_card

    local = tmp_path / "my-secret-folder" / "parent_a"
    local.mkdir(parents=True)
    card = write_model_card(tmp_path, parents=[str(local), "HuggingFaceTB/SmolLM2-135M"], method="ties",
                            parameters={}, num_parameters=1, dtype="bfloat16", base="Qwen/Qwen2.5-0.5B").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == ["HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B"]
    assert "my-secret-folder" not in card and "local folder `parent_a`" in card
    assert card.index("## Base") > card.index("## Parents") and "- `Qwen/Qwen2.5-0.5B`" in card.split("## Base")[1]


def test_tie_share():
    from darwin.search.loop import tied_share

    c = lambda *v: [{"fitness": x} for x in v]
    assert tied_share(c(0.7, 0.7, 0.7, 0.65)) == 0.75 and tied_share(c(0.1, 0.2, 0.3)) == pytest.approx(1 / 3)
    assert tied_share(c(0.7, 0.7)) == 0.0 and tied_share(c(0.7, None, 0.7, 0.7)) == 1.0


def test_pickled_copy_scores_the_same(tmp_path, model_a):
    """Ray actors receive a pickled fitness: the copy reloads its tasks and keeps the log path."""
    import pickle

    write_task(tmp_path / "tasks")
    fit = LmEvalFitness(["tiny_sums"], include_path=tmp_path / "tasks", limit=3)
    fit.log_path = tmp_path / "lm_eval.log"
    copy = pickle.loads(pickle.dumps(fit))
    assert copy.log_path == fit.log_path and copy(*model_a) == fit(*model_a)


def test_merged_child_card_names_the_base_apart(demo, tmp_path):
    out = darwin.merge(demo["recipe-ties.yaml"], tmp_path / "child", progress=False).out_dir
    card = (out / "README.md").read_text()
    parents, base = card.split("## Parents")[1].split("## Base")
    assert "local folder `base`" in base and "`base`" not in parents and "base_model" not in card.split("---")[1]
