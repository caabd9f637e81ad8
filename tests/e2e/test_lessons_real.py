"""scripts/lessons_real.py without the real model: lesson 8's task (built from the standard
library's docstrings), the configs of lessons 5-7 (built with a tiny Hugging Face model), the
cost arithmetic, reading lr_find's output, and lessons.py's checks of --model."""

import io
import json
import zlib
from contextlib import redirect_stdout

import ml_collections
import pytest

from conftest import load_script
import hf_dirs
from jaxtrain.errors import UserError
from jaxtrain.modes import lr_find
from jaxtrain.training import build as build_lib


real = load_script("lessons_real")
task_lib = load_script("make_which_function_task")


@pytest.fixture(scope="module")
def task():
  return task_lib.build_task()


def test_the_task_is_four_names_for_a_docstring_sentence_of_the_standard_library(task):
  docs, fewshot = task
  assert len(docs) == 400 and len(fewshot) == 100
  for doc in docs + fewshot:
    module, name = doc["source"].split(":")
    assert len(doc["choices"]) == len(set(doc["choices"])) == 4 and 0 <= doc["gold"] < 4
    assert doc["choices"][doc["gold"]] == name and module.endswith(".py")
    assert doc["query"].startswith("Python docstring: ") and doc["query"].endswith("\nFunction name:")
    assert name.lower() not in doc["query"].lower()  # The sentence does not give the name away.
  assert len({d["query"] for d in docs + fewshot}) == 500
  # The true name is anywhere: chance is a quarter.
  assert {d["gold"] for d in docs} == {0, 1, 2, 3} and max(sum(d["gold"] == g for d in docs) for g in range(4)) < 130


def test_the_few_shot_examples_come_from_other_modules_and_the_build_is_deterministic(task):
  docs, fewshot = task
  modules = lambda ds: {d["source"].split(":")[0] for d in ds}  # noqa: E731
  assert not modules(docs) & modules(fewshot)
  assert all(zlib.crc32(m.encode()) % task_lib.TASK_FEWSHOT_SHARE == 0 for m in modules(fewshot))
  assert task_lib.build_task() == task


def test_functions_are_public_documented_and_their_sentence_unique(tmp_path):
  (tmp_path / "tests").mkdir()
  (tmp_path / "tests" / "t.py").write_text('def check():\n  """Check that everything is in order today."""\n')
  (tmp_path / "a.py").write_text(
      'def disc(r):\n  """Return the area of a circle of the given radius.\n\n  More.\n  """\n'
      'def _hidden():\n  """Return something that nobody outside should see."""\n'
      'def scale(x):\n  """Scale the given value by the global scale factor."""\n'  # It names itself.
      'def same():\n  """Do what another function of this library does too."""\n'
      'class C:\n  def method(self):\n    """Return a value of the class instance itself."""\n')
  (tmp_path / "b.py").write_text('def twin():\n  """Do what another function of this library does too."""\n')
  (tmp_path / "c.py").write_text('def short():\n  """Too short."""\n')
  (tmp_path / "d.py").write_text('def good():\n  """Return a sentence that would be kept here."""\ndef bad(:\n')
  # Kept: disc alone (d.py is not Python; tests/ is skipped; the twins share a sentence).
  assert task_lib.documented_functions(str(tmp_path)) == [("a.py", "disc",
                                                       "Return the area of a circle of the given radius.")]
  assert task_lib.first_sentence("Split the path. Then join it.") == "Split the path."
  assert task_lib.first_sentence("No end here") == ""


def test_the_task_file_loads_as_lm_eval_reads_it(task, tmp_path):
  from jaxtrain.evals import lm_tasks  # pylint: disable=import-outside-toplevel
  loaded = lm_tasks.load(task_lib.write_task(str(tmp_path), task))
  assert loaded.name == "which_function" and loaded.kind == lm_tasks.MULTIPLE_CHOICE
  plain = lambda docs: [{k: d[k] for k in ("query", "choices", "gold")} for d in docs]  # noqa: E731  (less 'source')
  assert loaded.docs == plain(task[0]) and loaded.fewshot_docs == plain(task[1])
  context = loaded.contexts(1, limit=1)[0]
  assert context.count("Function name:") == 2 and context.endswith(loaded.docs[0]["query"])


def test_cost_is_the_dry_runs_arithmetic():
  numbers = real.cost(135e6, 16384, "lora")
  peak, _, price = real.ACCELERATORS["h100"]
  assert numbers["flops"] == 4 * 135e6 * 16384
  assert numbers["chip_hours"] == pytest.approx(numbers["flops"] / (peak * 1e12 * 0.4) / 3600)
  assert numbers["dollars"] == pytest.approx(numbers["chip_hours"] * price)
  assert real.cost(135e6, 16384, "full")["flops"] == 1.5 * numbers["flops"] == 3 * real.cost(135e6, 16384,
                                                                                             "scoring")["flops"]
  assert real.cost_cells(numbers) == ["16,384", "6.2e-06", "$1.7e-05"]


def test_the_few_shot_verdict_judges_acc_and_acc_norm_each_by_twice_the_combined_stderr():
  runs = {"0": dict(acc=0.59, acc_stderr=0.049, acc_norm=0.55, acc_norm_stderr=0.050),  # Lesson 8's, measured.
          "5": dict(acc=0.65, acc_stderr=0.048, acc_norm=0.72, acc_norm_stderr=0.045)}
  assert real.fewshot_verdict(runs) == (
      "At 0 shots the accuracy is above chance by more than twice its stderr. acc, 5 shots against 0: +0.060, twice "
      "the combined stderr 0.137: they make no difference beyond the noise. acc_norm, 5 shots against 0: +0.170, "
      "twice the combined stderr 0.135: they help. (The same documents: a paired test would be tighter.)")
  assert real.fewshot_verdict({"0": dict(acc=0.3, acc_stderr=0.05)}) == ("At 0 shots the accuracy is not clearly "
                                                                        "above chance.")


def test_lr_find_s_report_is_read_back(tmp_path):
  lrs = [1e-5 * 10 ** (k / 3) for k in range(10)]
  losses = [3.0, 2.9, 2.7, 2.4, 2.0, 1.8, 1.9, 2.5, 4.0, float("nan")]
  smoothed = [3.0, 2.95, 2.87, 2.75, 2.6, 2.46, 2.37, 2.39, 2.55, float("nan")]
  result = lr_find.Result(lrs=lrs, losses=losses, smoothed=smoothed, stop="the loss is nan at step 10 (lr 1.00e-02)",
                          suggested=None, min_over_10=None, written=None)
  result.suggested, result.min_over_10 = lr_find.suggest(lrs, smoothed)
  printed = io.StringIO()
  with redirect_stdout(printed):
    lr_find._report(result, ml_collections.ConfigDict({"optimizer": {"lr": 1e-3}}))  # pylint: disable=protected-access
  log = tmp_path / "lr_find.log"  # An earlier run of another command, then this one's.
  log.write_text("lr_find: up to 3 steps\n     1  1.00e-03      9.000      9.000\nSuggested learning rate: 1.0e-03 "
                 "(x)\nI0101 some log line\nlr_find: up to 10 steps from fresh parameters\n" + printed.getvalue())
  found = real.read_lr_find(str(log))
  assert len(found["curve"]) == 9 and found["curve"][0] == (1, 1e-5, 3.0, 3.0) and found["curve"][-1][0] == 10
  assert found["suggested"] == pytest.approx(result.suggested, rel=0.05)
  assert found["min_over_10"] == pytest.approx(result.min_over_10, rel=0.05)
  assert found["stop"] == "stopped: the loss is nan at step 10 (lr 1.00e-02)"
  assert real.read_lr_find(str(tmp_path / "none.log")) == {"curve": [], "suggested": None, "min_over_10": None,
                                                            "stop": None}


def test_get_config_gives_each_method_and_says_what_it_takes(tmp_path):
  configs = {m: real.get_config(f"{m}:mail.mbox:replay.jsonl:heldout.jsonl:task.json") for m in real.METHODS}
  assert "lora" in configs["lora"] and "lora" not in configs["full"] and "lora" not in configs["full_mix"]
  assert "early_stopping" in configs["lora_early_stopping"]
  assert not any("early_stopping" in c for m, c in configs.items() if m != "lora_early_stopping")
  assert all(set(c.evals) == {"val", "prose", "zeroshot"} for c in configs.values())
  assert set(real.get_config("lora:mail.mbox").evals) == {"val"}
  mixture = configs["full_mix"].input.data.mixture
  assert (mixture.mail.weight, mixture.prose.weight) == (0.75, 0.25) and mixture.mail.format == "mbox_replies"
  assert configs["full_mix"].evals.val.data.source == "mail"
  # Replay trains on one file, forgetting is measured on another, whole.
  assert mixture.prose.files == "replay.jsonl" and mixture.prose.validation_fraction == 0
  prose = configs["full_mix"].evals.prose.data
  assert (prose.files, prose.split, prose.validation_fraction) == ("heldout.jsonl", "train", 0)
  assert not set(real.REPLAY_FILES) & set(real.HELDOUT_PROSE_FILES)
  assert set(real.REPLAY_FILES) | set(real.HELDOUT_PROSE_FILES) == set(real.PROSE_FILES)
  for arg in ("", "lora", "adam:mail.mbox", "full_mix:mail.mbox", "lora:mail.mbox:prose.jsonl:task.json",
              "lora::r:h:t"):
    with pytest.raises(UserError, match="use METHOD:MBOX or METHOD:MBOX:REPLAY:HELDOUT:TASK"):
      real.get_config(arg)


def test_the_mixture_config_builds_on_a_tiny_model(tfds_dir, tmp_path):
  """full_mix: the mail and the prose in one mixture, the three evaluators, one checkpoint."""
  hf = hf_dirs.make(str(tmp_path / "hf"), "gqa_tied")
  mbox = real.write_mailbox(str(tmp_path / "mail.mbox"), threads=12)
  replay = real.write_jsonl(str(tmp_path / "replay.jsonl"), real.prose_documents(real.REPLAY_FILES[:1]))
  heldout = real.write_jsonl(str(tmp_path / "heldout.jsonl"), real.prose_documents(real.HELDOUT_PROSE_FILES))
  task = tmp_path / "task.jsonl"
  task.write_text("".join(json.dumps({"query": f"Q{i}:", "choices": ["a", "b", "c", "d"], "gold": i % 4}) + "\n"
                          for i in range(8)))
  config = real.get_config(f"full_mix:{mbox}:{replay}:{heldout}:{task}")
  config.init_from.hf_dir = hf
  config.input.data.seq_len = 64
  config.evals.zeroshot.limit = 4
  exp = build_lib.build(config)
  assert {s.name for s in exp.evaluators} == {"prose", "val", "zeroshot"}
  assert exp.data.source.names == ["mail", "prose"]
  assert exp.checkpointing["keep"] == 1 and exp.checkpointing["every_steps"] is None  # One, at the end.


def test_lessons_5_to_8_need_a_gguf_model(tmp_path, capsys):
  lessons = load_script("lessons")
  for argv, words in ((["--lessons=5"], "lessons 5-8 need --model=GGUF"),
                      ([f"--model={tmp_path}/none.gguf"], "is not a .gguf file")):
    with pytest.raises(SystemExit):
      lessons.main([*argv, f"--out={tmp_path}"])
    assert words in capsys.readouterr().err
