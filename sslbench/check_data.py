"""``sslbench check-data``: find every bad image file of a dataset before a run does.

Each split is opened with ``on_bad_image="skip"`` and :meth:`ImageDataset.scan` reads every item in a process pool,
exactly as training would read it, so the list is what pretext training would leave out (``grayscale`` included;
evaluation splits keep greyscale images, and fail on the other kinds unless ``on_bad_image=skip`` is set for them).
Prints, per split, a table of bad files by kind (count and meaning), then the files of each kind. Exit status 0 when
nothing is bad, 1 when something is, 2 for a usage error (unknown dataset, missing root or split).
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main"]

#: Side of the images the scan produces; the check does not depend on it, and small is fast.
_SCAN_IMAGE_SIZE = 16


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. year=2014")
    return key, value


def add_parser(subparsers: Any) -> None:
    """Add the ``check-data`` parser to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "check-data", help="list the bad image files of a dataset (truncated, not images, too small, greyscale, ...)",
        description="Read every image of a dataset's split(s) in parallel and list the files that a run would fail "
                    "on, or leave out of pretext training, grouped by kind. Exit status 1 when any file is bad.",
    )
    parser.add_argument("--dataset", required=True, help="dataset adapter, e.g. imagefolder, coco, camvid")
    parser.add_argument("--data-root", default=None, help="where the dataset's files are")
    parser.add_argument("--split", default=None, help="check this split only (default: every split that is present)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="reading processes (default: the number of CPUs; 0 reads in this process)")
    parser.add_argument("--min-image-size", type=int, default=8,
                        help="images whose shorter side is below this are bad (default: 8)")
    parser.add_argument("--set", dest="settings", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a dataset option, e.g. year=2014 for coco")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the bad files to this file, one 'kind<TAB>path<TAB>reason' line each")


def _adapter_options(cls: type, settings: list[tuple[str, str]]) -> dict[str, Any]:
    from sslbench.config import parse_value
    from sslbench.errors import UsageError

    params = inspect.signature(cls.__init__).parameters
    fixed = {"root", "split", "image_size", "on_bad_image", "min_image_size"}
    valid = sorted(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in fixed)
    options: dict[str, Any] = {}
    for key, value in settings:
        if key not in valid:
            raise UsageError(f"--set {key}=...: dataset {cls.name!r} has no option {key!r}; valid: "
                             f"{', '.join(valid) or '(none)'} (--data-root, --split and --min-image-size are options "
                             "of check-data itself)")
        try:
            options[key] = parse_value(value, params[key].default)
        except ValueError as exc:
            raise UsageError(f"--set {key}={value!r}: {exc}") from exc
    return options


def _print_report(title: str, bad: list[Any]) -> None:
    from sslbench.datasets.bad_images import BAD_KINDS, count_by_kind

    print(title)
    if not bad:
        return
    counts = count_by_kind(bad)
    width = max(len("kind"), *(len(k) for k in counts))
    print(f"  {'kind':<{width}}  count  meaning")
    for kind, count in counts.items():
        print(f"  {kind:<{width}}  {count:>5}  {BAD_KINDS.get(kind, '')}")
    for kind, count in counts.items():
        print(f"\n  {kind} ({count}):")
        for b in bad:
            if b.kind == kind:
                print(f"    {b.path}  ({b.reason})")
    print()


def main(args: argparse.Namespace) -> int:
    """Scan the requested split(s); 0 when no file is bad, 1 otherwise."""
    from sslbench.datasets.bad_images import BadImage, write_bad_images_file
    from sslbench.errors import DataError, UsageError
    from sslbench.registry import get_dataset_class

    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    cls = get_dataset_class(args.dataset)
    if not getattr(cls, "handles_bad_images", False):
        raise UsageError(f"dataset {args.dataset!r} reads no image files (it is generated); there is nothing to check")
    options = _adapter_options(cls, args.settings)
    splits = [args.split] if args.split else list(cls.splits)
    checked: dict[str, set[Path]] = {}
    scanned = 0
    errors: list[DataError] = []
    notes: list[str] = []
    found: dict[str, BadImage] = {}  # by path: a file in two overlapping splits is one bad file
    for split in splits:
        try:
            dataset = cls(root=args.data_root, split=split, image_size=_SCAN_IMAGE_SIZE, on_bad_image="skip",
                          min_image_size=args.min_image_size, **options)
        except DataError as exc:
            if args.split:
                raise
            errors.append(exc)
            notes.append(f"{args.dataset} {split}: not checked ({exc})")
            continue
        files = dataset.image_files()
        if files is not None:
            done = [name for name, seen in checked.items() if set(files) <= seen]
            if done and files:
                notes.append(f"{args.dataset} {split}: not checked again (its {len(files)} images were checked "
                             f"with split {done[0]})")
                continue
            checked[split] = set(files)
        total = len(dataset)
        bad = dataset.scan(workers=args.workers)
        scanned += 1
        for b in bad:
            found.setdefault(b.path, b)
        where = dataset.describe().get("split_dir") or dataset.describe().get("image_dir") or dataset.root
        _print_report(f"{args.dataset} {split} ({where}): {total} images checked, {len(bad)} bad", bad)
    if not scanned and errors:
        raise errors[0]
    for note in notes:
        print(note)
    if args.output is not None:
        write_bad_images_file(args.output, list(found.values()))
    if found:
        print(f"{len(found)} bad file(s). Pretext training with on_bad_image=skip leaves them out; evaluation "
              "splits keep greyscale images and stop at the other kinds unless on_bad_image=skip is set for them.")
        return 1
    print("no bad files")
    return 0
