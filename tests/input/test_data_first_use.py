"""The first use of a dataset built here: one line on what is prepared and where, none of
TFDS's download lines."""

import logging

from jaxtrain.data import open_source


def test_first_use_says_once_what_is_prepared_and_where(tmp_path, capfd, caplog):
  with caplog.at_level(logging.INFO):
    source = open_source("digits", "test", data_dir=str(tmp_path))
  assert len(source) == 359
  messages = [r.getMessage() for r in caplog.records]
  assert f"Preparing dataset digits in {tmp_path}/digits/1.0.0 (first use; built here, nothing is downloaded)." \
      in messages
  assert any(m.startswith("Prepared digits in ") and m.endswith("s: train 1,438, test 359 examples.") for m in messages)
  assert not any("dataset_info.json" in m for m in messages)
  out, err = capfd.readouterr()
  assert "Downloading and preparing" not in out + err and "Unknown size" not in out + err
