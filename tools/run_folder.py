"""One training run per checkpoint folder, kept consistent whatever happens to the process.

- `prepare`: before anything is written, refuse a second run into a folder that holds one (`--resume`
  continues it, `--overwrite` clears its files first), take a lock against two live runs in one folder,
  and remove the temporary files of interrupted writes.
- `check_resume`: a `--resume` checkpoint must be of the same role and experiment; options that may
  change are logged.
- `repair`: on `--resume`, make the folder agree with the checkpoint resumed from (the best file of
  each round is the recorded best epoch; epoch files of an interrupted continuation are removed;
  metrics.csv is rewritten from the checkpoint's history).
- `check_images`: every image a run will read is present, has a readable header and fits a patch.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from common import files
from common.errors import UserError
from tools import checkpoint as ckpt
from tools import collectives
from tools.utils import DistInfo

LOCK_NAME = ".run.lock"
PREFIXES = {"teacher": "FRIQA_teacher", "student": "NAR_student"}  # epoch checkpoint names per role
RESULT_FILES = ("metrics.csv", "summary.json")
LOG_FILE = "log.txt"
_EPOCH_FILE = re.compile(r"^(FRIQA_teacher|NAR_student)(?:_r(\d+))?_(\d+)\.pth$")
_BEST_FILE = re.compile(r"^best(?:_r(\d+))?\.pth$")
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # what an interrupted atomic write leaves

# What `--resume` compares with the options stored in the checkpoint. Options of the experiment must be
# the same; the others may change (each change is logged). Every training option is in one of the two.
EXPERIMENT_OPTIONS = (
    "train_dataset", "test_dataset", "train_test_num", "train_patch_num", "patch_size", "self_patch_num",
    "distillation_layer", "seed", "lr", "lr_ratio", "weight_decay", "batch_size", "update_opt_epoch",
    "freeze_backbone_bn", "upscale_small_images", "amp", "use_refHQ", "distillation_loss", "feature_loss_ratio",
    "test_patch_num", "use_fitting_prcc_srcc", "distill_all_diff_features", "teacher_test_augment", "eval_amp",
)
MAY_CHANGE_OPTIONS = (
    "epochs", "num_workers", "gpu_ids", "net_print", "print_netC", "test_datasets", "test_batch_size",
    "dataset_dir", "dataset_paths", "kadid10k_path", "live_path", "csiq_path", "tid2013_path", "koniq10k_path",
    "livec_path", "bid_path", "pipal_path", "ref_train_dataset_path", "ref_test_dataset_path",
    "ref_folder_paths", "teacherNet_model_path", "studentNet_model_path", "pretrained", "checkpoint_dir",
    "model_checkpoint_dir", "result_checkpoint_dir", "log_checkpoint_dir", "setting_file", "resume", "overwrite",
    "ref_cache_gb", "deterministic", "compile", "dist_timeout",
)
_NOT_LOGGED = {"model_checkpoint_dir", "result_checkpoint_dir", "log_checkpoint_dir", "setting_file", "resume",
               "dataset_paths"}  # derived from other options, or the resume option itself

T = TypeVar("T")


# ---- files of a run ---------------------------------------------------------------------------------
def _folders(args: argparse.Namespace) -> tuple[Path, Path, Path, Path]:
    return (Path(args.checkpoint_dir), Path(args.model_checkpoint_dir), Path(args.result_checkpoint_dir),
            Path(args.log_checkpoint_dir))


def _is_run_file(folder_kind: str, name: str, setting_name: str) -> bool:
    if folder_kind == "models":
        return bool(_EPOCH_FILE.match(name) or _BEST_FILE.match(name)) or name == "last.pth"
    return name in {"results": RESULT_FILES, "log": (LOG_FILE,), "root": (setting_name,)}[folder_kind]


def _run_files(args: argparse.Namespace, *, temporary: bool) -> list[Path]:
    """The files of a training run in its folder (or, with `temporary`, the leftovers of interrupted writes)."""
    root, models, results, log = _folders(args)
    setting_name = Path(args.setting_file).name
    found = []
    for kind, folder in (("root", root), ("models", models), ("results", results), ("log", log)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            match = _TEMP_FILE.match(path.name)
            if temporary and match and _is_run_file(kind, match.group("name"), setting_name):
                found.append(path)
            elif not temporary and not match and _is_run_file(kind, path.name, setting_name):
                found.append(path)
    return found


def holds_run(args: argparse.Namespace) -> bool:
    """Whether the checkpoint folder holds (part of) a run: any checkpoint, metrics or summary file."""
    _, models, results, _ = _folders(args)
    return any(p.parent in (models, results) for p in _run_files(args, temporary=False))


def _remove(paths: Iterable[Path]) -> int:
    count = 0
    for path in paths:
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
        except OSError as err:
            raise UserError(f"cannot delete {path}: {err.strerror or err}") from None
    return count


def resume_path(args: argparse.Namespace) -> Path:
    """The checkpoint `--resume` continues from."""
    return Path(args.model_checkpoint_dir) / "last.pth" if args.resume == "last" else Path(args.resume)


# ---- before the run: one run per folder, a lock -------------------------------------------------------
def on_main(info: DistInfo, work: Callable[[], T]) -> T | None:
    """Run `work` on rank 0 only; under torchrun every rank then raises the `UserError` rank 0 raised."""
    if not info.distributed:
        return work()
    result, message = None, None
    if info.is_main:
        try:
            result = work()
        except UserError as err:
            message = str(err)
    message = collectives.broadcast_text(message, info)
    if message is not None:
        raise UserError(message)
    return result


def prepare(args: argparse.Namespace, info: DistInfo) -> RunLock | None:
    """Make `--checkpoint_dir` ready for this run (rank 0): writable, locked, one run only, no leftovers."""
    return on_main(info, lambda: _prepare(args))


def _prepare(args: argparse.Namespace) -> RunLock:
    overwrite = getattr(args, "overwrite", False)
    root, models, results, log = _folders(args)
    if args.resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues the run in "
                        f"{root}, --overwrite deletes it")
    if args.resume:  # the options are compared before anything is written (the teacher's weights later)
        check_resume(args, ckpt.load_training_checkpoint(resume_path(args), mmap=True),
                     ckpt.checkpoint_role({"args": vars(args)}) or "teacher")
    for folder in (root, models, results, log):
        files.ensure_writable_folder(folder, "--checkpoint_dir")
    lock = RunLock(root / LOCK_NAME).acquire()
    try:
        if not args.resume and holds_run(args):
            if not overwrite:
                raise UserError(f"--checkpoint_dir {root} already holds a run (checkpoints or metrics): continue "
                                "it with --resume, start afresh there with --overwrite (deletes that run's "
                                "checkpoints, metrics and log), or choose another --checkpoint_dir")
            _clear(args)
        if args.resume and holds_run(args) and resume_path(args).resolve().parent != models.resolve():
            raise UserError(f"--resume {resume_path(args)} is not a checkpoint of the run in {root}, which holds "
                            "another run: resume into an empty --checkpoint_dir, or from this folder's checkpoints")
        _remove(_run_files(args, temporary=True))
    except BaseException:
        lock.release()
        raise
    return lock


def _clear(args: argparse.Namespace) -> None:
    """--overwrite: delete the run's files (never a checkpoint this run is about to read)."""
    files = _run_files(args, temporary=False)
    inputs = [getattr(args, option, None) for option in ("teacherNet_model_path", "studentNet_model_path",
                                                         "pretrained")]
    doomed = {p.resolve() for p in files}
    for option, value in zip(("--teacherNet_model_path", "--studentNet_model_path", "--pretrained"), inputs):
        if isinstance(value, str) and Path(value).resolve() in doomed:
            raise UserError(f"{option} {value} lies in the run that --overwrite would delete: copy it elsewhere first")
    _remove(files)
    print(f"--overwrite: deleted {len(files)} file(s) of the previous run in {args.checkpoint_dir}")


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux; tells a reused pid from the original), else None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: Mapping) -> bool:
    """Whether the process recorded in a lock (on this host) still runs."""
    try:
        pid = int(holder["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # it exists, under another user
    recorded, now = holder.get("start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


class RunLock:
    """A lock file recording the pid and host of the live run; the lock of a dead process is taken over."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.held = False
        pid = os.getpid()
        self.record = {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _read(self, path: Path) -> dict | None:
        try:
            value = json.loads(path.read_text())
            return value if isinstance(value, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as left by a dead process

    def _refuse(self, holder: Mapping) -> UserError:
        where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
        if holder.get("host") != self.record["host"]:
            return UserError(f"--checkpoint_dir {self.path.parent} is locked by a run on another machine ({where}); "
                             f"if no run is live there, delete {self.path}")
        return UserError(f"--checkpoint_dir {self.path.parent} is in use by a live run ({where}): wait for it to "
                         "finish or choose another --checkpoint_dir")

    def acquire(self) -> RunLock:
        """Take the lock or raise `UserError` naming the live holder."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(self.path)
                if holder is None:
                    continue  # released meanwhile
                if holder.get("host", self.record["host"]) != self.record["host"] or _alive(holder):
                    raise self._refuse(holder) from None
                self._take_over(holder)
                continue
            except OSError as err:
                raise UserError(f"--checkpoint_dir: cannot create the lock file {self.path}: "
                                f"{err.strerror or err}") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(self.record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            atexit.register(self.release)
            return self
        raise UserError(f"--checkpoint_dir {self.path.parent}: could not take the lock {self.path} (another run "
                        "is starting there?)")

    def _take_over(self, stale: Mapping) -> None:
        """Move a dead process's lock away; put it back if what was moved is a new live lock after all."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = self._read(aside) or {}
        if moved != dict(stale) and _alive(moved):
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)
        print(f"warning: removed the stale lock of a run that no longer exists (pid {stale.get('pid')}, "
              f"since {stale.get('since')}) in {self.path.parent}")

    def release(self) -> None:
        """Remove the lock file if this process holds it (also called at exit)."""
        if not self.held:
            return
        self.held = False
        if (self._read(self.path) or {}).get("pid") == self.record["pid"]:
            self.path.unlink(missing_ok=True)


# ---- before training: every image readable -------------------------------------------------------------
def check_images(datasets: Sequence, limit: int = 10, before: str = "training") -> None:
    """Read the header of every image the datasets will load (without decoding); `UserError` listing problems.

    Reports missing and unreadable files, images smaller than the patch size (unless upscaled or resized),
    and LQ/HQ pairs of different sizes, each as `python -m dataloaders check` words it.
    """
    from dataloaders.check import image_problems

    lines: list[str] = []
    seen: set[Path] = set()
    for dataset in datasets:
        uses_hq = dataset.mode != "lq"
        files = [p for s in dataset.samples for p in (s.lq_path, s.hq_path if uses_hq else None) if p is not None]
        files = [p for p in dict.fromkeys(files) if p not in seen]
        seen.update(files)
        problems, sizes = image_problems(files, dataset.patch_size,
                                         check_size=not dataset.upscale and dataset.resize_to is None)
        lines += problems
        for s in dict.fromkeys(s for s in dataset.samples if uses_hq and s.hq_path is not None):
            if s.lq_path in sizes and s.hq_path in sizes and sizes[s.lq_path] != sizes[s.hq_path]:
                lines.append(f"  size mismatch: {s.lq_path} vs its reference {s.hq_path}")
        if dataset.mode == "lq_hq_ref":
            refs = [p for p in dict.fromkeys(dataset.ref_paths) if p not in seen]
            seen.update(refs)
            lines += image_problems(refs, dataset.patch_size, check_size=not dataset.upscale)[0]
    if lines:
        more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
        raise UserError(f"{len(lines)} problem(s) with the images, found before {before}:\n"
                        + "\n".join(lines[:limit]) + more
                        + "\n(`python -m dataloaders check --dataset NAME --root PATH` reports a whole dataset)")


# ---- --resume: same role and experiment ---------------------------------------------------------------
def fingerprint(model: nn.Module) -> str:
    """A short hash of a network's weights outside the backbone (tells two teachers apart)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("feature_extractor."):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def check_resume(args: argparse.Namespace, state: Mapping, role: str, teacher: nn.Module | None = None) -> list[str]:
    """Refuse a `--resume` checkpoint of another role or experiment; the log lines of allowed changes."""
    where = f"--resume {resume_path(args)}"
    found = ckpt.checkpoint_role(state)
    if found is not None and found != role:
        raise UserError(f"{where} is {ckpt.role_with_article(found)} checkpoint; this script trains the "
                        f"{ckpt.ROLES[role]}")
    stored = state.get("args")
    if not isinstance(stored, Mapping):
        return [f"warning: {where} records no options: they cannot be compared with this run's"]
    current = ckpt.serializable_options(vars(args))
    changed = [(key, stored[key], current[key]) for key in current
               if key in stored and stored[key] != current[key]]
    refused = [f"--{key} {_shown(old)} -> {_shown(new)}" for key, old, new in changed
               if key not in MAY_CHANGE_OPTIONS]
    if refused:
        raise UserError(f"{where}: these options differ from the run's and would change the experiment: "
                        f"{'; '.join(refused)} (continue with the run's values, or start a new run)")
    if teacher is not None and state.get("teacher") and state["teacher"] != fingerprint(teacher):
        raise UserError(f"{where}: --teacherNet_model_path {args.teacherNet_model_path} holds other weights "
                        "than the teacher this run was distilled from")
    return [f"resume: --{key} {_shown(old)} -> {_shown(new)}" for key, old, new in changed if key not in _NOT_LOGGED]


# ---- --resume: make the folder agree with the checkpoint ------------------------------------------------
def _recorded(path: Path) -> tuple[int, int] | None:
    """(round, epoch) recorded in a complete checkpoint file, read without loading its tensors."""
    try:
        state = files.safe_torch_load(path, mmap=True)
    except UserError:
        return None
    if not isinstance(state, Mapping) or "epoch" not in state or state.get("pending") is not None:
        return None
    return int(state.get("round", 0)), int(state["epoch"])


def repair(args: argparse.Namespace, state: Mapping, role: str, rounds: int) -> list[str]:
    """After a crash or a resume from an earlier epoch: make `models/` and `metrics.csv` agree with `state`.

    Returns the log lines saying what was changed. Raises `UserError` when a best file cannot be made right.
    """
    models, source = Path(args.model_checkpoint_dir), resume_path(args)
    prefix = PREFIXES[role]
    current, epoch = int(state.get("round", 0)), int(state["epoch"])
    pending = state.get("pending") is not None
    suffix = (lambda r: f"_r{r + 1}") if rounds > 1 else (lambda r: "")
    notes = []

    stale = []  # written after the point resumed from: an interrupted (or abandoned) continuation
    for path in sorted(p for p in models.iterdir() if p.is_file()) if models.is_dir() else []:
        epoch_match, best_match = _EPOCH_FILE.match(path.name), _BEST_FILE.match(path.name)
        if epoch_match and epoch_match.group(1) == prefix:
            r, e = int(epoch_match.group(2) or 1) - 1, int(epoch_match.group(3))
            if r > current or (r == current and e > epoch):
                stale.append(path)
        elif best_match and best_match.group(1) and int(best_match.group(1)) - 1 > current:
            stale.append(path)
    if stale:
        _remove(stale)
        notes.append(f"resume: removed {len(stale)} checkpoint(s) written after the point resumed from: "
                     f"{', '.join(p.name for p in stale)}")

    last = models / "last.pth"
    if not pending and source.resolve() != last.resolve() and _recorded(last) != (current, epoch):
        files.atomic_copy(source, last)
        notes.append(f"resume: last.pth now holds the point resumed from ({source})")

    own = models / f"{prefix}{suffix(current)}_{epoch}.pth"
    if not pending and epoch >= 0 and not own.is_file():
        files.atomic_copy(source, own)
        notes.append(f"resume: {own.name} restored from {source}")

    bests = [(int(r["round"]) - 1, r.get("best_epoch")) for r in state.get("rounds", [])]
    bests.append((current, (state.get("best") or {}).get("epoch")))
    for r, best_epoch in bests:
        if best_epoch is None:
            continue
        best = models / f"best{suffix(r)}.pth"
        if _recorded(best) == (r, best_epoch):
            continue
        sources = [models / f"{prefix}{suffix(r)}_{best_epoch}.pth", source]
        good = next((p for p in sources if p.is_file() and _recorded(p) == (r, best_epoch)), None)
        if good is None:
            if best.exists():
                raise UserError(f"--resume: {best} does not hold the recorded best epoch {best_epoch}, and no "
                                f"checkpoint of that epoch is left to restore it from; move {best.name} away to "
                                "continue (best results stay recorded in summary.json)")
            notes.append(f"warning: resume: no checkpoint of the best epoch {best_epoch} is left for {best.name}")
            continue
        files.atomic_copy(good, best)
        notes.append(f"resume: {best.name} was not the recorded best epoch {best_epoch}: restored from {good.name}")

    history = state.get("history") or []
    if history:
        files.write_csv(Path(args.result_checkpoint_dir) / "metrics.csv", history)
    return notes
