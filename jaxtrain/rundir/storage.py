"""Where a run's files live: a local directory, or a Cloud Storage prefix (`gs://BUCKET/PATH`).

Local paths go through `os`, as they always have. gs:// paths go through gcsfs, fsspec's
Cloud Storage filesystem (the one etils.epath, and so Orbax, uses when TensorFlow is not
installed); checkpoint arrays go through TensorStore, which Orbax drives. Object storage
differs from a disk in three ways that shape the callers:
  - nothing appends: a file that grows (metrics.jsonl) is read and written back longer,
    on condition that nobody wrote it in between (`append_text`);
  - one object is written whole or not at all, and readers never see half of it: no
    temporary file and rename is needed;
  - nothing renames: a move is a copy and a delete (only damaged checkpoints are moved).
With STORAGE_EMULATOR_HOST set (a local emulator, as the tests use), gcsfs and
google-cloud-storage follow it, and TensorStore is pointed at the same URL.
"""

import functools
import importlib.util
import logging as std_logging
import os
import shutil
import tempfile

from jaxtrain.errors import UserError, first_line

PREFIX = "gs://"
NEEDS = "pip install -e '.[gcs]'"


def is_gcs(path):
  return str(path).startswith(PREFIX)


def absolute(path):
  """A local path made absolute (os.path.abspath: a literal '~' stays, as the shell left
  it); a gs:// path as given, less a trailing '/', its bucket's name checked."""
  path = str(path)
  if not is_gcs(path):
    return os.path.abspath(path)
  check_name(path)
  return path.rstrip("/")


def one_spelling(workdir):
  """A gs:// work directory less a trailing '/' (gs://b/p/ and gs://b/p are one directory,
  but would name different objects); a local one as given."""
  if not is_gcs(workdir):
    return workdir
  check_name(workdir, f"--workdir={workdir}")
  return absolute(workdir)


RULES = ("3-63 characters of lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit; "
         "with dots, up to 222, each part between dots at most 63")


def check_name(path, label=None):
  """One line when the bucket of the gs:// `path` has no valid name. Every gs:// path passes
  here (absolute, _fs) before Cloud Storage is reached: TensorStore ends in a traceback."""
  label = label or path
  bucket, _ = bucket_of(str(path))
  if not bucket:
    raise UserError(f"{label} names no bucket; give gs://BUCKET/PATH")
  problem = name_problem(bucket)
  if problem:
    raise UserError(f"{label}: bucket name {bucket!r} is invalid: {problem}; fix it (Cloud Storage bucket names "
                    f"are {RULES})")


@functools.cache
def name_problem(bucket):
  """What breaks Cloud Storage's naming rules in `bucket`, or None."""
  bad = next((c for c in bucket if c not in "abcdefghijklmnopqrstuvwxyz0123456789-_."), None)
  if bad is not None:
    return f"{bad!r} is not allowed"
  if len(bucket) < 3:
    return "it is shorter than 3 characters"
  if not (bucket[0].isalnum() and bucket[-1].isalnum()):
    return "it must start and end with a letter or digit"
  if "." not in bucket and len(bucket) > 63:
    return "it is longer than 63 characters"
  if len(bucket) > 222:
    return "it is longer than 222 characters"
  if any(len(part) > 63 for part in bucket.split(".")):
    return "a part between dots is longer than 63 characters"
  return None


def bucket_of(path):
  """('BUCKET', 'PATH') of 'gs://BUCKET/PATH'."""
  bucket, _, key = path[len(PREFIX):].partition("/")
  return bucket, key


def prepare_environment():
  """Settings gcsfs and TensorStore read once, at import or first use."""
  # gcsfs (2025.x on) otherwise asks the Storage Control API, over gRPC and TLS, whether
  # each bucket is hierarchical: an emulator cannot answer, and every operation on the
  # bucket then waits 60 s for the timeout (measured with fake-gcs-server).
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator if "://" in emulator else f"http://{emulator}")


prepare_environment()  # gcsfs reads its variable when it is imported, which may be before our first call.


def client():
  """google-cloud-storage's client, for what gcsfs cannot do: writes on a generation
  condition (the lock, appends) and listing a bucket with object permissions alone."""
  _require()
  return _client(os.environ.get("STORAGE_EMULATOR_HOST"))  # It keeps the endpoint it was made with.


@functools.cache
def _client(emulator):
  del emulator  # The cache's key.
  from google.cloud import storage as cloud_storage  # pylint: disable=import-outside-toplevel
  return cloud_storage.Client()


@functools.cache
def gcs():
  """The gcsfs filesystem (one per process: it caches listings, which we invalidate)."""
  _require()
  import gcsfs  # pylint: disable=import-outside-toplevel
  std_logging.getLogger("fsspec").setLevel(std_logging.WARNING)  # A line per file read at INFO.
  # Its read-ahead thread logs a traceback for each failed read (a file that vanished, as
  # Orbax's listing races a set-aside), then raises the same error to the reader anyway.
  std_logging.getLogger("fsspec.prefetcher").setLevel(std_logging.CRITICAL)
  return gcsfs.GCSFileSystem()


def _require():
  """One line when the libraries are missing. google-cloud-storage: the lock and appends,
  Orbax's deletions of old checkpoints."""
  prepare_environment()
  if any(importlib.util.find_spec(name) is None for name in ("gcsfs", "google.cloud.storage")):
    raise UserError(f"a gs:// work directory needs gcsfs and google-cloud-storage: {NEEDS}")


def _fs(path):
  check_name(path)
  fs = gcs()
  fs.invalidate_cache()  # Another process (the run, its other hosts) may have written since.
  return fs


def exists(path):
  return _fs(path).exists(path) if is_gcs(path) else os.path.exists(path)


def isdir(path):
  """On gs://, a prefix with at least one object under it (object stores have no directories)."""
  return _fs(path).isdir(path) if is_gcs(path) else os.path.isdir(path)


def isfile(path):
  return _fs(path).isfile(path) if is_gcs(path) else os.path.isfile(path)


def listdir(path):
  """The names directly under `path`."""
  if not is_gcs(path):
    return os.listdir(path)
  return [name.rstrip("/").rsplit("/", 1)[-1] for name in _fs(path).ls(path, detail=False)]


def files_under(path):
  """Every file under `path`, as full paths (os.walk's files)."""
  if not is_gcs(path):
    return [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
  return [PREFIX + name for name in _fs(path).find(path)]


def open_file(path, mode="r"):
  """`open`, for a local path or a gs:// one; a gs:// file written appears whole when it
  closes, and there is no appending to one (`append_text`)."""
  if "a" in mode and is_gcs(path):
    raise ValueError(f"{path}: objects cannot be appended to; use storage.append_text")
  if not is_gcs(path):
    return open(path, mode, encoding=None if "b" in mode else "utf-8")  # pylint: disable=consider-using-with
  return _fs(path).open(path, mode, encoding=None if "b" in mode else "utf-8")


def read_text(path):
  with open_file(path) as f:
    return f.read()


def write_text(path, text):
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data):
  """All or nothing: a temporary file renamed locally; one object on gs://."""
  if is_gcs(path):
    _fs(path).pipe_file(path, data)
    return
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)


def copy_in(local_file, path):
  """Copies a local file to `path`, all or nothing."""
  if is_gcs(path):
    _fs(path).put_file(local_file, path)
    return
  shutil.copyfile(local_file, path + ".tmp")
  os.replace(path + ".tmp", path)


def local_copy(path, beside=()):
  """A local copy of the gs:// file `path`, for libraries that read only local files
  (SentencePiece, tokenizers): ~/.cache/jaxtrain/gs/BUCKET/PATH, fetched again each time.
  The same place each time, so a config that names it stays the same on resume. The files
  named in `beside` that are next to it come too (a tokenizer's tokenizer_config.json),
  and their stale copies go."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  local = os.path.join(root, "jaxtrain", "gs", *bucket_of(path))
  os.makedirs(os.path.dirname(local), exist_ok=True)
  for name in (os.path.basename(path), *beside):
    source, target = os.path.join(os.path.dirname(path), name), os.path.join(os.path.dirname(local), name)
    if name != os.path.basename(path) and not exists(source):
      if os.path.exists(target):
        os.remove(target)
      continue
    partial = f"{target}.{os.getpid()}.partial"  # Processes of one host may fetch it at once.
    _fs(source).get_file(source, partial)
    os.replace(partial, target)
  return local


def put_tree(local_directory, path):
  """Copies a local directory's files under the gs:// `path`."""
  _fs(path).put(local_directory.rstrip("/") + "/", path, recursive=True)


def makedirs(path):
  """Local only: on gs://, a prefix exists once something is written under it."""
  if not is_gcs(path):
    os.makedirs(path, exist_ok=True)


def move(source, target, marker=None):
  """A rename locally; on gs://, a copy of every object, then the source's deletion, its
  `marker` file first (Orbax's commit_success.txt: a move cut short then leaves an
  incomplete step behind, which is passed over, never a complete-looking partial one)."""
  if not is_gcs(source):
    os.rename(source, target)
    return
  fs = _fs(source)
  # Not fs.mv: it tries the moveTo API first, which only hierarchical buckets have, and
  # logs a traceback per object before falling back to this.
  fs.copy(source, target, recursive=True)
  if marker and fs.exists(f"{source}/{marker}"):
    fs.rm(f"{source}/{marker}")
  fs.rm(source, recursive=True)


def append_text(path, text):
  """Appends to a gs:// object as object storage allows: read it, write it back longer, on
  condition that nobody wrote it in between (else again). Two writers of one file (a
  run's training and an evaluation beside it) both keep their lines."""
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  bucket, key = bucket_of(path)
  while True:
    blob = client().bucket(bucket).get_blob(key)
    before, generation = ("", 0) if blob is None else (blob.download_as_text(if_generation_match=blob.generation),
                                                      blob.generation)
    try:
      client().bucket(bucket).blob(key).upload_from_string(before + text, if_generation_match=generation)
      return
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      continue  # Written (or deleted) in between: read it again.


def check_bucket(workdir):
  """One line, before anything is written, when the bucket of a gs:// `workdir` cannot be
  used: it does not exist, or there are no credentials, or no permission to read it."""
  check_name(workdir, f"--workdir={workdir}")
  bucket, key = bucket_of(workdir)
  _require()
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  try:
    # Listing needs only the object permissions a run needs anyway (roles/storage.objectAdmin
    # has no storage.buckets.get); exists() would say False for every failure alike.
    list(client().list_blobs(bucket, prefix=key, max_results=1))
  except exceptions.NotFound:
    raise UserError(f"--workdir={workdir}: bucket gs://{bucket} does not exist; create it "
                    f"(gcloud storage buckets create gs://{bucket}) or fix the name") from None
  except Exception as e:  # pylint: disable=broad-except  (gcsfs and google-auth raise many kinds)
    raise UserError(f"--workdir={workdir}: cannot reach bucket gs://{bucket}: {access_problem(e)}") from None


def access_problem(error):
  """What a failed Cloud Storage call means for the user, in a few words. gcsfs falls back
  to anonymous access when it finds no credentials, so "no credentials" reaches us as 401."""
  text = f"{type(error).__name__}: {first_line(error, 200)}"
  code = getattr(error, "code", None)
  if code == 401 or "DefaultCredentialsError" in text or "Anonymous caller" in text or "credentials" in text.lower():
    return (f"no credentials ({text}); run `gcloud auth application-default login`, or set "
            f"GOOGLE_APPLICATION_CREDENTIALS (on a VM: give it a service account)")
  if code == 403 or isinstance(error, PermissionError) or "Forbidden" in text or "does not have storage." in text:
    return f"no permission ({text}); grant this account roles/storage.objectAdmin on the bucket"
  return text


# ---- Paths the user gives, and places to write, checked before the work ---------------------


def absolute_path(value, flag):
  """A path flag's value made absolute once, at the command line's edge: '~' expanded (as
  the library's readers do), a gs:// path kept (its bucket's name checked, naming the
  flag). None and '' stay as they are: 'not given'."""
  if not value:
    return value
  if is_gcs(value):
    check_name(value, f"--{flag}={value}")
    return absolute(value)
  return absolute(os.path.expanduser(value))


def writable_problem(directory):
  """Why files cannot be made in the local, existing `directory` (the OS's words), or None.
  Tried, not asked: os.access says yes to root everywhere but on a read-only mount, and
  knows nothing of ACLs or root squashed on NFS. The trial file is removed at once."""
  try:
    handle, probe = tempfile.mkstemp(prefix=".jaxtrain-write-check-", dir=directory)
  except OSError as e:
    return e.strerror or str(e)
  os.close(handle)
  os.remove(probe)
  return None


def appendable_problem(path):
  """Why the existing file `path` cannot be appended to, or None; its bytes unchanged."""
  try:
    with open(path, "a", encoding="utf-8"):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def existing_parent(path, flag):
  """The nearest directory above `path` that exists (what a write would create its
  directories in); a file in its place is the user's mistake."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"--{flag}={path}: {parent} is a file, not a directory")
  return parent
