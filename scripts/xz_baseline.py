"""Bits per byte of `xz -9e` on a split of stdlib_code: the baseline a language model must beat.

    python scripts/xz_baseline.py [--split=validation]

(a) each file compressed on its own (what a model that sees one file at a time competes
with), summed; (b) all the split's files concatenated in path order (xz then also copies
across files). Python's lzma with preset 9 | PRESET_EXTREME is `xz -9e`, .xz headers
included. Reads the files straight from this Python's stdlib: the same split as the
TFDS dataset.
"""

import argparse
import time

from jaxtrain.data import stdlib_code


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--split", default="validation", choices=tuple(stdlib_code.SPLITS))
  args = parser.parse_args()
  start = time.time()
  result = stdlib_code.xz_bits_per_byte([source for _, source in stdlib_code.read_split(args.split)])
  print(f"stdlib_code {args.split}: {result['files']} files, {result['bytes']} bytes")
  print(f"xz -9e bits per byte: per file {result['per_file']:.4f}, concatenated {result['concatenated']:.4f} "
        f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
  main()
