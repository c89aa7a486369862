"""Score a folder or zip of images with a registered version, as its endpoint would.

    python -m pipelines.batch --input photos/ --output scores.csv           # newest Approved
    python -m pipelines.batch --version 3 --input photos.zip --output scores.jsonl --top-k 3
    python -m pipelines.batch --sagemaker --input s3://bucket/photos/ --output s3://bucket/scores/

With ``--sagemaker`` (and ``s3://`` input and output), a SageMaker Batch Transform job of the
Model Registry's version scores every object under the input prefix: one image per object,
answered by the version's own handlers, each answer written to ``<output>/<key>.out`` (the
endpoint's JSON; an image the handlers refuse gets ``{"error": ...}``). See
pipelines/transform.py; ``--wait`` follows the job to its end.

Every image goes through the version's own serving handlers (``code/inference.py`` in its
model.tar.gz: ``model_fn``, ``input_fn``, ``predict_fn``): the served model's exact transforms
and test-time augmentation. One row per file, in a fixed order (a folder's files sorted, then its
subfolders; a zip's entries sorted):

- ``.csv``: ``file,label,class,probability,top_k,error`` (``top_k`` as ``label:probability``
  pairs joined by ``|``);
- ``.jsonl``: ``{"file", "label", "class", "probability", "top_k": [...]}`` per line.

A file that is not a usable image (not an image, truncated, too many pixels, over
``MAX_FILE_BYTES``, unreadable) gets a row with its ``error`` and the run goes on. Memory does not
grow with the input: files are listed folder by folder, at most ``--batch-size`` x 4 images are
decoded ahead of the forward pass (by ``--workers`` threads, each running torch on one core, so
they leave the cores to the forward pass), and rows are written batch by batch. The output file
is the record of progress: a run interrupted (Ctrl-C, a crash, a full disk) and started again
with the same arguments resumes after the last whole row (a partly written last row is dropped).

Local registry (``--home``, default ``$DOGBREED_HOME`` or ``./.dogbreed``). Exit 0 when every
file has a row; 2 for a bad request (no such version, a missing input, an output of another
input), 130 when interrupted. (A rerun checks that the output's last row names the file the
input has at that place: an input of other files is refused; one whose files have the same
names in the same order is not told apart.)
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Iterator

from breedkit import archives
from pipelines import spec

FORMATS = (".csv", ".jsonl")
CSV_FIELDS = ("file", "label", "class", "probability", "top_k", "error")
MAX_FILE_BYTES = 64 * 2**20  # larger files are not read (a 40 MP JPEG is about 15 MB)
AHEAD = 4  # batches decoded ahead of the forward pass


class BatchError(Exception):
    """A clear, user-facing problem with the request."""


# --- the input: files in a fixed order, never all listed at once ------------------------------

def _hidden(name: str) -> bool:
    """Hidden files and folders (.DS_Store, .git, macOS's __MACOSX); not '..', which is
    refused with its reason."""
    return (name.startswith(".") and name not in (".", "..")) or name == "__MACOSX"


def folder_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file under ``root``, in a fixed order listed folder
    by folder: a folder's files (sorted), then its subfolders (sorted), each the same way."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(n for n in filenames if not _hidden(n)):
            full = Path(dirpath) / name
            yield full.relative_to(root).as_posix(), full


def zip_entries(archive: zipfile.ZipFile) -> Iterator[tuple[str, zipfile.ZipInfo]]:
    """(name, entry) of the archive's files, sorted; names with ``..`` or an absolute path
    come as they are and are refused when read."""
    infos = [i for i in archive.infolist() if not i.is_dir()
             and not any(_hidden(part) for part in PurePosixPath(i.filename).parts)]
    for info in sorted(infos, key=lambda i: i.filename):
        yield info.filename, info


def count(source) -> int:
    if isinstance(source, zipfile.ZipFile):
        return sum(1 for _ in zip_entries(source))
    return sum(1 for _ in folder_files(source))


def items(source) -> Iterator[tuple[str, object]]:
    return zip_entries(source) if isinstance(source, zipfile.ZipFile) else folder_files(source)


def read_bytes(source, ref) -> bytes:
    """The file's bytes; OSError or ValueError (the reason) for a file that is not read."""
    if isinstance(source, zipfile.ZipFile):
        refused = archives.zip_entry_problem(ref.filename)
        if refused:
            raise ValueError(refused)
        if ref.file_size > MAX_FILE_BYTES:
            raise ValueError(f"{ref.file_size:,} bytes, over the {MAX_FILE_BYTES:,} limit")
        with source.open(ref) as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    size = ref.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size:,} bytes, over the {MAX_FILE_BYTES:,} limit")
    return ref.read_bytes()


def open_input(path: str):
    p = Path(path)
    if p.is_dir():
        return p
    if p.is_file():
        try:
            return zipfile.ZipFile(p)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BatchError(f"--input {path} is neither a folder nor a readable zip archive "
                             f"({exc})") from None
    raise BatchError(f"--input {path} does not exist: pass a folder or a .zip of images")


# --- the output: the record of progress --------------------------------------------------------

class Output:
    """Rows appended to ``path``; on a rerun, where the last run stopped."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in FORMATS:
            raise BatchError(f"--output {path}: name a .csv or .jsonl file")
        if not self.path.parent.is_dir():
            raise BatchError(f"--output {path}: the folder {self.path.parent} does not exist")

    def resume(self) -> tuple[int, str | None]:
        """(rows already written, the file of the last one), read as a stream (a long output
        is never held whole); a partly written last row is cut off first."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, None
        self._cut_partial_row()
        if self.path.stat().st_size == 0:  # not one whole row was written
            return 0, None
        count, last = 0, None
        with open(self.path, newline="", encoding="utf-8", errors="replace") as fh:
            if self.kind == ".csv":
                reader = csv.reader(fh)
                if next(reader, None) != list(CSV_FIELDS):
                    raise self._not_ours()
                for row in reader:
                    count, last = count + 1, row[0] if row else last
                return count, last
            for line in fh:
                count, last = count + 1, line
        try:
            return count, json.loads(last)["file"] if last else None
        except (ValueError, KeyError, TypeError):
            raise self._not_ours() from None

    def _not_ours(self) -> BatchError:
        return BatchError(f"--output {self.path} exists and is not an output of this command: "
                          f"pass another file name")

    def _cut_partial_row(self, block: int = 1 << 16) -> None:
        """Truncate the file after its last newline (what follows is a row cut short)."""
        with open(self.path, "r+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            position = end
            while position > 0:
                start = max(0, position - block)
                fh.seek(start)
                chunk = fh.read(position - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    if start + newline + 1 < end:
                        fh.truncate(start + newline + 1)
                    return
                position = start
            fh.truncate(0)  # not one whole row

    def open(self, fresh: bool):
        self.handle = open(self.path, "a", newline="", encoding="utf-8")
        if fresh and self.kind == ".csv":
            self.handle.write(",".join(CSV_FIELDS) + "\r\n")
        self.writer = csv.writer(self.handle) if self.kind == ".csv" else None

    def write(self, row: dict) -> None:
        if self.writer is None:
            self.handle.write(json.dumps(row) + "\n")
            return
        top = "|".join(f"{t['label']}:{t['probability']}" for t in row.get("top_k", []))
        self.writer.writerow([row["file"], row.get("label", ""), row.get("class", ""),
                              row.get("probability", ""), top, row.get("error", "")])

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# --- scoring -----------------------------------------------------------------------------------

def decoder(handlers, source):
    """Decode one file with the served model's input_fn: (file, image tensor or None, error)."""
    def decode(item):
        name, ref = item
        try:
            data = handlers.input_fn(read_bytes(source, ref), "application/x-image")
            return name, data["images"][0], None
        except Exception as exc:  # noqa: BLE001 - every unusable file is a row, never a crash
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return name, None, reason.split("\n")[0][:300]
    return decode


def answer_rows(decoded: list, handlers, model, top_k: int) -> list[dict]:
    """One forward pass over the batch's images; a row per file, in input order."""
    images = [image for _, image, _ in decoded if image is not None]
    results = iter(handlers.predict_fn({"images": images, "top_k": top_k}, model)
                   if images else [])
    rows = []
    for name, image, error in decoded:
        if image is None:
            rows.append({"file": name, "error": error})
            continue
        result = next(results)
        rows.append({"file": name, "label": result["label"], "class": result["class"],
                     "probability": result["probability"],
                     "top_k": [{k: t[k] for k in ("label", "class", "probability")}
                               for t in result["top_k"]]})
    return rows


def score(handlers, model, source, output: Output, *, batch_size: int, top_k: int,
          workers: int, progress: bool = True) -> dict:
    """Score every file not yet in ``output``; counts of what was done."""
    from tqdm import tqdm

    from pipelines.deploy.server import torch_threads

    done, last = output.resume()
    total = count(source)
    pending = items(source)
    if done:
        for index, (name, _) in enumerate(pending, 1):
            if index == done:
                if name != last:
                    raise BatchError(f"--output {output.path} holds {done} rows, the last for "
                                     f"{last}, but this input's file {done} is {name}: it was "
                                     f"written for another input; pass a new --output")
                break
        else:
            raise BatchError(f"--output {output.path} holds {done} rows, more than this input "
                             f"has files ({total}): pass a new --output")
    output.open(fresh=done == 0)
    counts = collections.Counter(resumed=done)
    decode = decoder(handlers, source)
    bar = tqdm(total=total, initial=done, unit="img", disable=not progress,
               desc="scoring", dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode", initializer=torch_threads,
                                initargs=(1,)) as pool:
            window = collections.deque()
            for item in pending:
                window.append(pool.submit(decode, item))
                if len(window) >= batch_size * AHEAD:
                    _flush(window, batch_size, handlers, model, top_k, output, counts, bar)
            while window:
                _flush(window, batch_size, handlers, model, top_k, output, counts, bar)
    finally:
        output.close()
        bar.close()
    return dict(counts, total=total)


def _flush(window, batch_size, handlers, model, top_k, output, counts, bar) -> None:
    """Score the oldest batch of the window and write its rows."""
    decoded = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
    for row in answer_rows(decoded, handlers, model, top_k):
        output.write(row)
        counts["unreadable" if "error" in row else "scored"] += 1
    output.flush()
    bar.update(len(decoded))


# --- the command -------------------------------------------------------------------------------

def model_archive(home, group: str, version: int | None) -> tuple[int, str]:
    from pipelines.registry import LocalRegistry, usable_version

    package = usable_version(LocalRegistry(home), group, version)  # (RegistryError: main says)
    return package.version, package.model_data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a folder or a .zip of images")
    p.add_argument("--output", required=True, help="a .csv or .jsonl file (resumed if it exists)")
    p.add_argument("--version", type=int, help="default: the newest Approved version")
    p.add_argument("--group", default=spec.DEFAULT_MODEL_PACKAGE_GROUP)
    p.add_argument("--home", help="default $DOGBREED_HOME or ./.dogbreed")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2))),
                   help="decode threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    aws = p.add_argument_group("SageMaker (--sagemaker)")
    aws.add_argument("--sagemaker", action="store_true",
                     help="a Batch Transform job of the Model Registry's version; --input and "
                          "--output are s3:// prefixes")
    aws.add_argument("--instance-type", default=spec.BATCH_INSTANCE_TYPE)
    aws.add_argument("--instance-count", type=int, default=1)
    aws.add_argument("--role-arn", help="the model's execution role (default $SAGEMAKER_ROLE_ARN "
                                        "or the Studio role)")
    aws.add_argument("--region")
    aws.add_argument("--profile")
    aws.add_argument("--wait", action="store_true", help="follow the job until it ends")
    return p


def main(argv=None) -> int:
    from pipelines.registry import RegistryError, home_dir
    from pipelines.sqlite import DamagedStore

    args = build_parser().parse_args(argv)
    if args.sagemaker or args.input.startswith("s3://"):
        return sagemaker_main(args)
    for name in ("top_k", "batch_size", "workers"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        output = Output(args.output)
        source = open_input(args.input)
        version, archive = model_archive(home_dir(args.home), args.group, args.version)
        from pipelines.deploy.server import load_handlers

        with tempfile.TemporaryDirectory(prefix="batch-") as scratch:
            handlers, model = load_handlers(archive, scratch)
            print(f"scoring {args.input} with {args.group} version {version}", file=sys.stderr,
                  flush=True)
            counts = score(handlers, model, source, output, batch_size=args.batch_size,
                           top_k=args.top_k, workers=args.workers, progress=not args.quiet)
    except (BatchError, RegistryError, DamagedStore) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.output} holds every whole row so far; run the same command "
              f"again to go on", file=sys.stderr)
        return 130
    print(f"{counts.get('scored', 0)} images scored, {counts.get('unreadable', 0)} files "
          f"unreadable (rows with an error), {counts.get('resumed', 0)} already in "
          f"{args.output} from an earlier run", file=sys.stderr)
    return 0


# --- in SageMaker: a Batch Transform job --------------------------------------------------------

def sagemaker_main(args) -> int:
    from pipelines.aws import exit_code

    return exit_code(lambda: start_sagemaker_job(args))


def start_sagemaker_job(args) -> int:
    from pipelines.aws import CliError

    if not (args.sagemaker and args.input.startswith("s3://")
            and args.output.startswith("s3://")):
        raise CliError("a Batch Transform job reads an s3:// prefix and writes to one: "
                       "pass --sagemaker --input s3://... --output s3://... (a folder or "
                       "zip here is scored without --sagemaker)")
    if args.instance_count < 1:
        raise CliError("--instance-count must be at least 1")
    if not args.instance_type.startswith("ml."):
        raise CliError(f"--instance-type must be a SageMaker instance type such as "
                       f"{spec.BATCH_INSTANCE_TYPE}, got {args.instance_type!r}")
    job = start_transform(args)
    return wait_transform(job, args) if args.wait else 0


def start_transform(args) -> dict:
    """CreateModel (once per version) and CreateTransformJob; what was started."""
    import time

    from pipelines import shapes, transform
    from pipelines.aws import CliError, boto_session, describe_or_none, resolve_role
    from pipelines.deploy.sagemaker import container

    session = boto_session(args.region, args.profile)
    sm = session.client("sagemaker")
    package = transform.sagemaker_package(session, args.group, args.version)
    version = package["ModelPackageVersion"]
    settings = argparse.Namespace(instance_type=args.instance_type, group=args.group)
    primary = container(sm, settings, package)  # (the GPU image on a GPU instance type)
    model = transform.model_name(package, args.instance_type)
    role = resolve_role(args.role_arn)
    job_name = f"{spec.BATCH_JOB_PREFIX}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    requests = {
        "CreateModel": transform.model_request(model, role, primary, []),
        "CreateTransformJob": transform.transform_request(
            job_name, model, args.input, args.output.rstrip("/"), args.instance_type,
            args.instance_count, package["ModelPackageArn"], []),
    }
    for operation, request in requests.items():  # what SageMaker would refuse, before a call
        problems = shapes.validate_arguments(operation, request)
        if problems:
            raise CliError(f"{operation} would be refused: {'; '.join(problems)}")
    if describe_or_none(lambda: sm.describe_model(ModelName=model)) is None:
        sm.create_model(**requests["CreateModel"])
    sm.create_transform_job(**requests["CreateTransformJob"])
    print(f"started Batch Transform job {job_name}: {args.group} version {version} scores "
          f"{args.input} into {args.output.rstrip('/')}/<key>.out", flush=True)
    if not args.wait:
        print(f"follow it: aws sagemaker describe-transform-job --transform-job-name {job_name}")
    return {"sm": sm, "name": job_name}


def wait_transform(job: dict, args, poll_seconds: float = 30.0) -> int:
    import time

    while True:
        described = job["sm"].describe_transform_job(TransformJobName=job["name"])
        status = described["TransformJobStatus"]
        if status in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(poll_seconds)
    print(f"{job['name']}: {status}")
    if status != "Completed":
        print(f"reason: {described.get('FailureReason', '(none given)')}; the job's log is in "
              f"CloudWatch under /aws/sagemaker/TransformJobs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
