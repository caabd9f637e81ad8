"""scripts/lessons.py with --quick: every lesson runs its `jaxtrain.launch` / `lm_eval`
commands, reads real numbers back from the runs, writes lessons.json and lessons.md, and
reuses finished runs when it runs again. Lessons 3 and 4 use a tiny language model trained
here (tests/tiny_lm.py) in place of code_lm."""

import importlib.util
import json
import math
import os

import pytest

from conftest import load_script, tiny_lm
from jaxtrain import train


lessons = load_script("lessons")


def read(out):
  with open(os.path.join(out, "lessons.json"), encoding="utf-8") as f:
    return json.load(f)["lessons"]


def first_column(result):
  return [row[0] for row in result["rows"]]


def test_prose_documents_are_paragraphs_of_the_files_shipped_with_python():
  docs = lessons.prose_documents(lessons.PROSE_FILES)
  assert {d["source"] for d in docs} == set(lessons.PROSE_FILES)
  assert len(docs) > 300 and sum(len(d["text"]) for d in docs) > 100_000
  assert all(d["text"].strip() and not d["text"].startswith("\n") for d in docs)
  html = [d["text"] for d in docs if d["source"].endswith(".html")]
  assert html and not any("<div" in t or "<p>" in t for t in html)  # The tags are gone, the text stays.
  # Short paragraphs are joined: only a file's last document may be under 200 characters.
  assert all(len(a["text"]) >= 200 for a, b in zip(docs, docs[1:]) if a["source"] == b["source"])


def test_lesson_1_shows_three_learning_rates_and_a_rerun_reuses_the_runs(tfds_dir, tmp_path, capsys):
  out = str(tmp_path / "lessons")
  lessons.main(["--lessons=1", "--quick", f"--out={out}"])
  result = read(out)["1_learning_rate"]
  assert first_column(result) == ["too high", "well chosen", "too low"]
  runs = result["runs"]
  final = {label: r["train_loss"][-1][1] for label, r in runs.items()}
  assert final["too high"] > final["well chosen"] + 1 and final["too low"] > final["well chosen"] + 1
  assert max(v for _, v in runs["too high"]["train_loss"]) > 10  # It blew up on the way.
  assert runs["well chosen"]["val_accuracy"][-1][1] > 0.8 > runs["too high"]["val_accuracy"][-1][1]
  assert runs["too high"]["train_loss"][-1][0] == 60 and all(r["error"] is None for r in runs.values())
  printed = capsys.readouterr().out
  assert "### Lesson 1: the learning rate" in printed and "| too high | 1 |" in printed
  with open(os.path.join(out, "lessons.md"), encoding="utf-8") as f:
    assert "| well chosen | 0.003 |" in f.read()
  if importlib.util.find_spec("matplotlib"):
    assert os.path.getsize(os.path.join(out, "lesson_1_learning_rate.png")) > 1000
  else:
    assert "Plots skipped: matplotlib is not installed (pip install matplotlib)." in printed

  lessons.main(["--lessons=1", "--quick", f"--out={out}"])  # Again: nothing is trained.
  assert printed.count("[finished before: reused]") == 0
  assert capsys.readouterr().out.count("[finished before: reused]") == 3
  assert read(out)["1_learning_rate"]["runs"] == runs


@pytest.mark.slow
def test_lesson_2_runs_plain_dropout_and_early_stopping(tfds_dir, tmp_path):
  out = str(tmp_path / "lessons")
  lessons.main(["--lessons=2", "--quick", f"--out={out}"])
  result = read(out)["2_overfitting"]
  assert first_column(result) == ["plain", "dropout 0.1", "early stopping"]
  runs = result["runs"]
  assert all(r["steps"] == 40 and math.isfinite(r["final_val_loss"]) for r in runs.values())
  # Dropout changes training; early stopping that never triggers is the plain run, bit for bit.
  assert runs["dropout 0.1"]["train_loss"] != runs["plain"]["train_loss"]
  assert runs["early stopping"]["val_loss"] == runs["plain"]["val_loss"]
  assert runs["plain"]["best_val_loss"] == min(v for _, v in runs["plain"]["val_loss"])


@pytest.fixture(scope="module")
def tiny_pretrained(tfds_dir, corpus, tmp_path_factory):
  """A tiny LM pre-trained on a few stdlib modules: the code LM of lessons 3 and 4."""
  workdir = str(tmp_path_factory.mktemp("tiny_lm"))
  config = tiny_lm(corpus)
  config.total_steps = 150
  config.input.data.seq_len = 128  # Room for next_line's longest lines.
  config.input.batch_size = 8
  config.evals.val.every_steps = 50
  config.checkpoint.every_steps = 50
  train.run(config, workdir)
  return workdir


@pytest.mark.slow
def test_lessons_3_and_4_on_a_tiny_pretrained_lm(tiny_pretrained, tmp_path):
  out = str(tmp_path / "lessons")
  lessons.main(["--lessons=3,4", "--quick", f"--code_lm={tiny_pretrained}", "--shots=0,1", f"--out={out}"])
  results = read(out)
  forgetting = results["3_forgetting"]
  assert first_column(forgetting) == ["before (pre-trained)", "full, lr 3e-3", "full, lr 3e-4",
                                      "full, lr 3e-3, 20% old data", "LoRA r=8, lr 3e-3"]
  runs = forgetting["runs"]
  # "Before" is the pre-trained checkpoint on the old domain: the run's own last val/loss.
  own = [r["val/loss"] for r in lessons.read_rows(tiny_pretrained) if "val/loss" in r][-1]
  assert runs["before"]["old_loss"] == pytest.approx(own, abs=1e-5)
  high, lora = runs["full, lr 3e-3"], runs["LoRA r=8, lr 3e-3"]
  assert high["new_loss"] < runs["before"]["new_loss"]  # It learnt the prose ...
  assert high["old_increase"] > 0                       # ... and forgot some code; each remedy forgets less.
  assert all(r["old_increase"] < high["old_increase"] for k, r in runs.items() if k not in ("before", "full, lr 3e-3"))
  assert 0 < lora["trainable"] < high["trainable"]
  assert all(math.isfinite(r["old_loss"]) and r["new_curve"][-1][0] == 8 for k, r in runs.items() if k != "before")

  fewshot = results["4_fewshot"]
  assert first_column(fewshot) == ["0", "1"]
  assert all(r["n"] == 40 and 0 <= r["acc"] <= 1 and r["acc_stderr"] > 0 for r in fewshot["runs"].values())
  with open(os.path.join(out, "4_fewshot", "1shot", "results.json"), encoding="utf-8") as f:
    assert json.load(f)["n-shot"] == {"next_line": 1}


def test_lessons_3_and_4_need_a_language_model(tmp_path, capsys):
  with pytest.raises(SystemExit):
    lessons.main(["--lessons=3", f"--out={tmp_path}"])
  assert "lessons 3 and 4 need --code_lm=RUN" in capsys.readouterr().err
