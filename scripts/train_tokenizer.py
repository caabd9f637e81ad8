"""Trains a tokenizer from the command line: SentencePiece (.model) or byte-level BPE (tokenizer.json).

    python scripts/train_tokenizer.py --corpus=stdlib_code --kind=sentencepiece --vocab_size=4096 --out=spm.model
    python scripts/train_tokenizer.py --corpus='notes/*.txt,mail/*.mbox' --format=text --kind=bpe \
        --vocab_size=8192 --out=tokenizer.json

--corpus=stdlib_code trains on the stdlib_code train split, read straight from this
Python's stdlib (the same files as the TFDS dataset, no data directory needed); anything
else is a comma-separated list of files or globs read in --format, of which the train split
(by document hash, as in input.data) is used. Prints the time, the tokens on the corpus and
whether decode(encode(text)) gave every text back.
"""

import argparse
import sys
import time

from jaxtrain.data import documents
from jaxtrain.data import stdlib_code
from jaxtrain.data import text
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--corpus", required=True, help="stdlib_code, or comma-separated files / globs")
  parser.add_argument("--format", default="text", choices=documents.FORMATS, help="for files: how to read them")
  parser.add_argument("--field", default="text", help="for --format=jsonl: the JSON field of the text")
  parser.add_argument("--validation_fraction", type=float, default=0.05, help="for files: held out, not trained on")
  parser.add_argument("--kind", default="sentencepiece", choices=tokenizers.KINDS)
  parser.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"), help="for --kind=sentencepiece")
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--out", required=True, help="the file to write (.model or .json)")
  args = parser.parse_args()

  if args.corpus == "stdlib_code":
    texts = [source for _, source in stdlib_code.read_split("train")]
  else:
    paths = documents.resolve_files(args.corpus.split(","), "--corpus")
    options = {"field": args.field} if args.format == "jsonl" else {}
    docs = [d for d in documents.read(args.format, paths, **options)
            if documents.in_split(d, "train", args.validation_fraction)]
    texts = text.training_texts(docs)
  start = time.time()
  if args.kind == "sentencepiece":
    tokenizers.train_sentencepiece(texts, args.out, args.vocab_size, model_type=args.model_type)
  else:
    tokenizers.train_bpe(texts, args.out, args.vocab_size)
  seconds = time.time() - start
  tok = tokenizers.load(args.out)
  encoded = [ids for ids, _ in tok.encode_with_bytes(texts)]
  num_tokens = sum(len(ids) for ids in encoded)
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  lossless = sum(tok.decode(ids) == t for ids, t in zip(encoded, texts))
  print(f"{args.out}: {args.kind} vocab {tok.vocab_size}, trained in {seconds:.1f} s on {len(texts)} texts, "
        f"{num_bytes} bytes")
  print(f"{num_tokens} tokens ({num_bytes / max(num_tokens, 1):.2f} bytes per token); "
        f"decode(encode(text)) == text for {lossless} of {len(texts)} texts")


if __name__ == "__main__":
  try:
    main()
  except UserError as e:
    sys.exit(f"error: {e}")
