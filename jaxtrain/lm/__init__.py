"""Language models: the `LM` API (`jaxtrain.lm.load` of a work directory or a Hugging Face
directory; logits, generate, export), sampling with a KV cache, and the converters to and
from Hugging Face (model directories and PEFT adapters).

    import jaxtrain.lm
    lm = jaxtrain.lm.load("runs/code_lm")
"""

from jaxtrain.lm.language_model import LM, load  # pylint: disable=unused-import  (the public API)
