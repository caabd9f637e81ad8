"""The tables and plots of scripts/lessons.py: a lesson's result (title, columns, rows,
notes, runs) as markdown, and its figure as a PNG (matplotlib, optional)."""

import math

def markdown(result):
  lines = [f"### {result['title']}", "", "| " + " | ".join(result["columns"]) + " |",
           "|" + " --- |" * len(result["columns"])]
  lines += ["| " + " | ".join(row) + " |" for row in result["rows"]]
  return "\n".join(lines + ["", result["notes"], ""])


def plot(number, result, path):
  """Draws lesson `number`'s figure into `path`; False if matplotlib is missing."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  runs = result["runs"]
  colors = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:orange")
  if number == 1:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for color, (label, r) in zip(colors, runs.items()):
      if r["train_loss"]:
        ax.plot(*zip(*r["train_loss"]), color=color, label=f"lr {r['lr']:g}: {label}")
      if r["val_loss"]:
        ax.plot(*zip(*r["val_loss"]), "o--", color=color, markersize=4)
    ax.axhline(math.log(10), color="gray", lw=0.8, ls=":", label="chance (ln 10)")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss (log scale)",
           title="Lesson 1: the learning rate (digits CNN; lines: train, circles: val)")
  elif number == 2:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for color, label in zip(colors, ("plain", "dropout 0.1")):
      ax.plot(*zip(*runs[label]["train_loss"]), ":", color=color, label=f"{label}: train")
      ax.plot(*zip(*runs[label]["val_loss"]), "-", color=color, label=f"{label}: held-out")
    stop = runs["early stopping"]
    ax.axvline(stop["steps"], color="gray", ls="--", lw=0.8)
    ax.plot([stop["best_step"]], [stop["best_val_loss"]], "k*", markersize=11,
            label=f"early stopping: stops at {stop['steps']}, keeps step {stop['best_step']}")
    top = max(v for label in ("plain", "dropout 0.1") for _, v in runs[label]["train_loss"] + runs[label]["val_loss"])
    ax.set(xlabel="step", ylabel="loss (nats per token)", title="Lesson 2: overfitting a small text", ylim=(0, top * 1.3))
  elif number == 3:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    before = runs["before"]
    left.plot([before["new_loss"]], [before["old_loss"]], "ko", label="before (pre-trained)")
    for color, (label, r) in zip(colors, ((k, v) for k, v in runs.items() if k != "before")):
      left.annotate("", (r["new_loss"], r["old_loss"]), (before["new_loss"], before["old_loss"]),
                    arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
      left.plot([r["new_loss"]], [r["old_loss"]], "o", color=color, label=label)
      right.plot(*zip(*([(0, before["new_loss"])] + r["new_curve"])), "o-", color=color, markersize=3, label=label)
    left.set(xlabel="new domain (prose): held-out loss", ylabel="old domain (code): validation loss",
             title="Forgetting: before -> after")
    left.legend(fontsize=8)
    right.set(xlabel="fine-tuning step", ylabel="new domain: held-out loss", title="Learning the new domain")
    right.legend(fontsize=8)
    fig.suptitle("Lesson 3: catastrophic forgetting (lower is better on both axes)")
    ax = None
  elif number == 5:
    fig, ax = _lesson_5(plt, runs, colors)
  elif number == 6:
    fig, ax = _lesson_6(plt, runs, colors)
  elif number == 7:
    fig, ax = _lesson_7(plt, runs, colors)
  else:
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [int(k) for k in runs]
    for metric, color in (("acc", "tab:blue"), ("acc_norm", "tab:orange")):
      ax.errorbar(ks, [runs[str(k)][metric] for k in ks], yerr=[runs[str(k)][f"{metric}_stderr"] for k in ks],
                  fmt="o-", capsize=3, color=color, label=metric)
    ax.axhline(0.25, color="gray", ls=":", label="chance")
    ax.set_xticks(ks)
    task = "next_line" if number == 4 else "which_function (SmolLM2)"
    ax.set(xlabel="k (examples in the context)", ylabel="accuracy", ylim=(0, None),
           title=f"Lesson {number}: {task}, zero- to few-shot")
  if ax is not None:
    ax.legend(fontsize=8, loc="upper right" if number == 2 else "best")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return True


def _lesson_5(plt, runs, colors):
  """Left: the loss of each rate by step; right: lr_find's curve with the three rates marked."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  rates = [(label, r) for label, r in runs.items() if label != "lr_find"]
  for color, (label, r) in zip(colors, rates):
    if r["train_loss"]:
      left.plot(*zip(*r["train_loss"]), color=color, label=f"lr {r['lr']:g}: {label}")
    if r["val_loss"]:
      left.plot(*zip(*r["val_loss"]), "o--", color=color, markersize=4)
  left.set_yscale("log")
  left.set(xlabel="step", ylabel="loss (log scale)", title="LoRA on the mailbox (lines: train, circles: held-out)")
  left.legend(fontsize=8)
  found = runs["lr_find"]
  if found["curve"]:
    _, lrs, losses, smoothed = zip(*found["curve"])
    right.plot(lrs, losses, color="tab:blue", alpha=0.3, label="loss")
    right.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed")
  for color, (label, r) in zip(colors, rates):
    right.axvline(r["lr"], color=color, ls=":", lw=1, label=f"{label} ({r['lr']:g})")
  if found["suggested"]:
    right.axvline(found["suggested"], color="black", ls="--", lw=1, label=f"suggested {found['suggested']:.1e}")
  right.set_xscale("log")
  right.set(xlabel="learning rate", ylabel="training loss", title="--mode=lr_find (printed points)")
  right.legend(fontsize=8)
  fig.suptitle("Lesson 5: the learning rate (SmolLM2-135M-Instruct, LoRA)")
  return fig, None


def _lesson_6(plt, runs, colors):
  """Train and held-out loss by epoch, plain and with dropout; where early stopping stopped."""
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for color, label in zip(colors, [k for k in runs if k != "early stopping"]):
    epochs = dict(runs[label]["epochs"])
    for key, style, what in (("train_loss", ":", "train"), ("val_loss", "o-", "held-out")):
      ax.plot(*zip(*[(epochs[s], v) for s, v in runs[label][key]]), style, color=color, markersize=4,
              label=f"{label}: {what}")
  stop = runs["early stopping"]
  epochs = dict(stop["epochs"])
  ax.axvline(epochs[stop["steps"]], color="gray", ls="--", lw=0.8)
  ax.plot([epochs[stop["best_step"]]], [stop["best_val_loss"]], "k*", markersize=11,
          label=f"early stopping: stops at epoch {epochs[stop['steps']]:.3g}, keeps {epochs[stop['best_step']]:.3g}")
  ax.set(xlabel="epoch", ylabel="loss (nats per reply token)", ylim=(0, None),
         title="Lesson 6: overfitting a small mailbox (SmolLM2, LoRA)")
  return fig, ax


def _lesson_7(plt, runs, colors):
  """Left: mail against prose loss, before -> after each method; right: zero-shot accuracy."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  before = runs["before"]
  left.plot([before["mail_loss"]], [before["prose_loss"]], "ko", label="before (the base model)")
  methods = [(k, v) for k, v in runs.items() if k != "before"]
  for color, (label, r) in zip(colors, methods):
    left.annotate("", (r["mail_loss"], r["prose_loss"]), (before["mail_loss"], before["prose_loss"]),
                  arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
    left.plot([r["mail_loss"]], [r["prose_loss"]], "o", color=color, label=label)
  left.set(xlabel="mail: held-out loss", ylabel="general prose: held-out loss", title="Forgetting: before -> after")
  left.legend(fontsize=7)
  labels = ["before"] + [label for label, _ in methods]
  accs = [before] + [r for _, r in methods]
  right.bar(range(len(labels)), [r["zeroshot_acc"] for r in accs], yerr=[r["zeroshot_stderr"] for r in accs],
            capsize=3, color=["black", *colors[:len(methods)]])
  right.axhline(0.25, color="gray", ls=":", label="chance")
  right.set_xticks(range(len(labels)))
  right.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
  right.set(ylabel="accuracy", ylim=(0, 1), title="which_function, zero-shot")
  right.legend(fontsize=8)
  fig.suptitle("Lesson 7: catastrophic forgetting (lower loss, higher accuracy: better)")
  return fig, None
