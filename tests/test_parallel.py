"""Every strategy trains the same: one device; on 8 (fake CPU) devices jit with the batch
over `data`, jit with FSDP, jit with data x fsdp x tensor rules, pmap, and accumulation.
Also the meshes, rules and their mistakes, and FSDP's memory."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import read_checkpoint
from jaxtrain.config import Reader
from jaxtrain.errors import UserError
from jaxtrain import parallel
from jaxtrain import train
from test_train import tiny_config

RULES = (("Dense_0/kernel", (None, "tensor")), ("head/kernel", ("tensor", None)))
VARIANTS = {
    "jit_data": {},
    "jit_fsdp": {"mesh": {"data": 1, "fsdp": -1}, "fsdp_min_size": 0},
    "jit_data_fsdp_tensor": {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_min_size": 0, "rules": RULES},
    "pmap": {"strategy": "pmap"},
    "jit_fsdp_accumulate": {"mesh": {"data": 2, "fsdp": -1}, "fsdp_min_size": 0, "accumulate_steps": 2},
    # A rule that places an array over fsdp itself: FSDP leaves that array alone.
    "jit_fsdp_own_rule": {"mesh": {"data": 1, "fsdp": -1}, "fsdp_min_size": 0,
                          "rules": (("Dense_0/kernel", ("fsdp", None)),)},
}


def config_for(parallel_config, hidden=(32,)):
  """The tiny digits MLP without dropout (pmap draws dropout per device: other masks)."""
  c = tiny_config()
  c.model.dropout = 0.0
  c.model.hidden = hidden
  c.parallel.update(ml_collections.ConfigDict(parallel_config))
  return c


ON_EIGHT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
import jax, numpy as np
from jaxtrain import train
from jaxtrain.training import build as build_lib
from test_parallel import VARIANTS, config_for
assert jax.device_count() == 8
report = {{}}
for name, variant in VARIANTS.items():
  train.run(config_for(variant), os.path.join({root!r}, name))
  exp = build_lib.build(config_for(variant, hidden=(256, 256)))
  state = exp.strategy.init(exp.create, exp.abstract_state)
  on_device_0 = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
                    if s.device == jax.devices()[0])
  report[name] = {{
      "specs": {{jax.tree_util.keystr(p, simple=True, separator="/"):  # One entry per dimension.
                list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec))
                for p, x in jax.tree_util.tree_leaves_with_path(state)}},
      "bytes_on_device_0": on_device_0,
      "bytes_per_device": exp.strategy.bytes_per_device(exp.abstract_state),
      "total_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
  }}
with open(os.path.join({root!r}, "report.json"), "w") as f:
  json.dump(report, f)
"""


# ---- Meshes and rules, without devices ----------------------------------------------------


@pytest.mark.parametrize("mesh, devices, sizes", [
    ({}, 8, {"data": 8, "fsdp": 1, "tensor": 1}),
    ({"data": 1, "fsdp": -1}, 8, {"data": 1, "fsdp": 8, "tensor": 1}),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 16, {"data": 2, "fsdp": 4, "tensor": 2}),
    ({"data": -1, "tensor": 4}, 8, {"data": 2, "fsdp": 1, "tensor": 4}),
    ({"data": 2, "fsdp": 2, "tensor": 2}, 8, {"data": 2, "fsdp": 2, "tensor": 2}),
])
def test_mesh_sizes_fill_in_the_rest(mesh, devices, sizes):
  assert parallel._mesh_sizes(Reader(mesh, "parallel.mesh"), devices) == sizes  # pylint: disable=protected-access


def test_a_mesh_the_devices_do_not_fill_is_refused():
  with pytest.raises(UserError, match=r"parallel.mesh \(data=-1, fsdp=1, tensor=3\) needs a multiple of 3 devices; "
                                      r"there are 8"):
    parallel._mesh_sizes(Reader({"tensor": 3}, "parallel.mesh"), 8)  # pylint: disable=protected-access


def test_a_rule_that_does_not_divide_a_dimension_is_refused():
  with pytest.raises(UserError, match=r"parallel.rules\[1\] splits dimension 1 of params/head/kernel \(256, 10\) "
                                      r"into 4 parts, which does not divide 10; change the rule or the mesh"):
    parallel._fit((None, "tensor"), (256, 10), "params/head/kernel", 1,  # pylint: disable=protected-access
                  {"data": 2, "fsdp": 1, "tensor": 4})


def test_processes_are_joined_only_for_a_multi_process_job(monkeypatch):
  """One SLURM task (`srun -n1`, several per allocation) or --num_processes=1 is a single
  process: no coordinator is started (it would clash with a sibling's on the job's port)."""
  for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
    monkeypatch.setenv(name, {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1"}.get(name, "0"))
  assert parallel.join_processes() is None
  assert parallel.join_processes(num_processes=1) is None
  assert jax.process_count() == 1


# ---- On 8 devices ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eight(tfds_dir, tmp_path_factory):
  """Every variant trained on 8 devices, and a report of its shardings and bytes."""
  root = str(tmp_path_factory.mktemp("eight"))
  script = ON_EIGHT.format(tests=os.path.dirname(__file__), root=root)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(root, "report.json"), encoding="utf-8") as f:
    return root, json.load(f)


@pytest.fixture(scope="module")
def one_device(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one") / "run")
  train.run(config_for({}), workdir)
  return workdir


def curves_and_state(workdir, like=None):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  curves = {key: [r[key] for r in rows if key in r] for key in ("train/loss", "train/grad_norm", "val/loss")}
  return curves, read_checkpoint(workdir, 30, like)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_strategy_trains_as_one_device(eight, one_device, variant):
  curves_1, state_1 = curves_and_state(one_device)
  curves_8, state_8 = curves_and_state(os.path.join(eight[0], variant), like=state_1)
  for key, curve in curves_1.items():
    assert len(curve) == 3
    np.testing.assert_allclose(curves_8[key], curve, rtol=2e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_comparison_can_fail(one_device):
  """A different global batch (accumulation does not change it; this does) is caught."""
  other = config_for({})
  other.input.batch_size = 16
  workdir = os.path.join(os.path.dirname(one_device), "other")
  train.run(other, workdir)
  curves_1, _ = curves_and_state(one_device)
  curves_o, _ = curves_and_state(workdir)
  assert not np.allclose(curves_o["train/loss"], curves_1["train/loss"], rtol=2e-5)


@pytest.mark.slow
def test_fsdp_splits_each_large_array_over_its_largest_divisible_dimension(eight):
  specs = eight[1]["jit_fsdp"]["specs"]
  assert specs["params/Dense_0/kernel"] == [None, "fsdp"]   # [64, 256]: the larger dimension.
  assert specs["params/Dense_1/kernel"] == ["fsdp", None]   # [256, 256]: the first of equals.
  assert specs["params/head/kernel"] == ["fsdp", None]      # [256, 10]: 10 does not divide by 8.
  assert specs["params/Dense_0/bias"] == ["fsdp"]
  assert specs["params/head/bias"] == [None]                # [10]: nothing divides by 8.
  moments = [path for path in specs if path.endswith("/Dense_1/kernel") and path.startswith("opt_state/")]
  assert len(moments) == 2 and all(specs[path] == ["fsdp", None] for path in moments)  # Adam's mu and nu.
  assert specs["step"] == [] and specs["rng"] == [None]     # Not floats: replicated.


@pytest.mark.slow
def test_tensor_rules_and_fsdp_combine(eight):
  specs = eight[1]["jit_data_fsdp_tensor"]["specs"]
  assert specs["params/Dense_0/kernel"] == ["fsdp", "tensor"]  # The rule's axis, then fsdp on a free one.
  assert specs["params/head/kernel"] == ["tensor", "fsdp"]
  assert specs["params/Dense_1/kernel"] == ["fsdp", None]      # No rule: FSDP alone.
  moments = [path for path in specs if path.endswith("/Dense_0/kernel") and path.startswith("opt_state/")]
  assert len(moments) == 2 and all(specs[path] == ["fsdp", "tensor"] for path in moments)


@pytest.mark.slow
def test_a_rule_naming_fsdp_replaces_the_automatic_choice(eight):
  specs = eight[1]["jit_fsdp_own_rule"]["specs"]
  assert specs["params/Dense_0/kernel"] == ["fsdp", None]  # Automatic FSDP would pick the 256, not the 64.
  assert specs["params/Dense_1/kernel"] == ["fsdp", None]


@pytest.mark.slow
def test_fsdp_holds_an_eighth_of_the_state_per_device(eight):
  replicated, fsdp = eight[1]["jit_data"], eight[1]["jit_fsdp"]
  assert replicated["bytes_on_device_0"] == replicated["total_bytes"] == replicated["bytes_per_device"]
  assert fsdp["bytes_on_device_0"] == fsdp["bytes_per_device"]
  ratio = fsdp["bytes_on_device_0"] / replicated["bytes_on_device_0"]
  assert 1 / 8 <= ratio < 1 / 8 * 1.01, ratio  # Only the 10-wide head bias (and counters) stay whole.
  assert eight[1]["pmap"]["bytes_on_device_0"] == replicated["total_bytes"]
