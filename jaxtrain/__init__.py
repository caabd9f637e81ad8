"""jaxtrain: pure, jit-compiled training of JAX models from experiment configs."""

__version__ = "0.1.0"
