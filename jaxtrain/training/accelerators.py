"""Common accelerators: their peak, memory and an approximate price, for MFU in training
(the device present) and for the dry run's cost estimate (--accelerator)."""

# name: (dense bf16 peak TFLOP/s per chip, memory GB per chip, USD per chip-hour on demand).
# Peaks and memory are the vendors' figures. Prices are approximate 2026 list prices: Google
# Cloud's for TPUs (us-central), a GPU cloud's (RunPod, SXM parts) for NVIDIA's; check yours.
ACCELERATORS = {
    "tpu-v4": (275.0, 32, 3.22),
    "tpu-v5e": (197.0, 16, 1.20),
    "tpu-v5p": (459.0, 95, 4.20),
    "tpu-v6e": (918.0, 32, 2.70),
    "a100": (312.0, 80, 1.89),
    "h100": (989.0, 80, 2.69),
    "h200": (989.0, 141, 3.59),
    "b200": (2250.0, 180, 5.98),
}
# jax.Device.device_kind -> name: MFU's peak in training, the default --accelerator of a dry run.
KINDS = {"TPU v4": "tpu-v4", "TPU v5 lite": "tpu-v5e", "TPU v5": "tpu-v5p", "TPU v5p": "tpu-v5p",
         "TPU v6 lite": "tpu-v6e", "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA A100-SXM4-40GB": "a100",
         "NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200", "NVIDIA B200": "b200"}


def peak_tflops(device_kind):
  """Dense bf16 peak TFLOP/s per chip of a `jax.Device.device_kind`, or None if unknown."""
  name = KINDS.get(device_kind)
  return ACCELERATORS[name][0] if name else None
