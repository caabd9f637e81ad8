"""The 8x8 digits that scikit-learn ships: a small CNN (or `:mlp`) trained on CPU in seconds.

    python -m jaxtrain.launch --config=experiments/digits.py --workdir=runs/digits
    python -m jaxtrain.launch --config=experiments/digits.py:mlp --workdir=runs/digits_mlp
"""

import ml_collections

from jaxtrain.config import duration

PP_EVAL = "value_range(-1, 1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"
PP_TRAIN = "value_range(-1, 1)|random_shift(1)|onehot(10, key='label', key_result='labels')|keep('image', 'labels')"


def get_config(arg=None):
  variant = arg or "cnn"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.update(duration("total", epochs=40))
  c.update(duration("log_every", steps=50))

  c.input = ml_collections.ConfigDict()
  # Decoded into memory once: 1,438 images of 64 bytes.
  c.input.data = dict(name="digits", split="train", cache=True,
                      data_dir=ml_collections.config_dict.placeholder(str))
  c.input.batch_size = 128
  c.input.pp = PP_TRAIN

  if variant == "cnn":
    # On CPUs, --config.model.conv=im2col --config.model.pool=reshape trains 1.75x faster
    # (docs/results.md, Benchmarks).
    c.model = dict(name="cnn", num_classes=10, features=(32, 64), dense=128, dropout=0.1, dtype="float32",
                   conv="xla", pool="window")
  elif variant == "mlp":
    c.model = dict(name="mlp", num_classes=10, hidden=(256, 256), dropout=0.1, dtype="float32")
  else:
    raise ValueError(f"unknown variant '{variant}': use experiments/digits.py:cnn or :mlp")
  # One device or many: the same run. See docs/scaling.md.
  c.parallel = dict(strategy="jit", mesh=dict(data=-1, fsdp=1, tensor=1), fsdp_min_size=2**16, rules=(),
                    accumulate_steps=1)
  c.loss = dict(name="softmax_xent", label_smoothing=0.0)
  c.optimizer = dict(name="adamw", lr=3e-3, weight_decay=1e-4, grad_clip_norm=1.0)
  c.schedule = dict(name="cosine", **duration("warmup", epochs=2))

  c.evals = ml_collections.ConfigDict()
  # data_dir unset: the evaluator reads from the training data's directory.
  c.evals.val = dict(type="classification", data=dict(name="digits", split="test", cache=True),
                     pp=PP_EVAL, **duration("every", epochs=10))
  c.checkpoint = dict(keep=2, **duration("every", epochs=10))
  # --config.profile.start_step=N: a JAX profiler trace of num_steps steps in WORKDIR/profile.
  c.profile = dict(start_step=ml_collections.config_dict.placeholder(int), num_steps=5)
  return c
