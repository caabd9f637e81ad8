"""scripts/bench_generate.py: its agreement line, and jaxtrain's contender on the real model
(where fetch_model has put it: skipped otherwise), without torch."""

import os

import pytest

from conftest import ROOT


@pytest.fixture
def bench(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))  # It imports bench_contenders beside it.
  import bench_generate  # pylint: disable=import-outside-toplevel
  return bench_generate


def test_agreement_counts_identical_rows_and_says_where_the_first_differs(bench):
  assert bench.agreement([[1, 2], [3, 4]], [[1, 2], [3, 4]]) == "2/2 rows"
  assert bench.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]]) == (
      "1/2 rows (first difference: prompt 1, new token 1)")


@pytest.mark.slow
def test_the_jaxtrain_contender_generates_exactly_the_new_tokens(bench):
  import fetch_model  # pylint: disable=import-outside-toplevel
  path = os.path.join(fetch_model.default_cache_dir(), fetch_model.MODELS["smollm2-135m-instruct"][0])
  if not os.path.isfile(path):
    pytest.skip(f"{path} absent (scripts/fetch_model.py fetches it)")
  prompts, pad_id = bench.prompt_ids(path, 2)
  run, info, profile = bench.contender(dict(contender="jaxtrain", model=path, prompts=prompts, pad_id=pad_id, batch=1,
                                            max_new_tokens=3, threads=1))
  assert [len(row) for row in info["ids"]] == [3, 3]
  assert run(2) > 0 and profile()["first_token_ms"] > 0
