"""How a torchrun job ends, as one exit code a user can script: 0 done, 75 stopped early after every rank saved (resume
me), 2 a user error, 1 a crash (docs/quickstart.md, "Exit codes").

torchrun alone cannot say this: it turns any non-zero worker exit into 1 with a ~40-line ChildFailedError report, and
SIGTERMs the other ranks as soon as one exits non-zero, even a rank still writing its part of a checkpoint. So under
our launchers (OUTCOME_FILE_ENV set) a rank that stopped gracefully records it in the outcome file and exits 0, a rank
with a user error appends its line to the error file (mpo_dist.cli.main), and `python -m mpo_dist.train.launcher
TORCHRUN_ARGS` (launch/train.sh, launch/real.sh) runs torchrun in this process with torchrun's own report sent to a log
file, then prints one last line and returns the code. slurm/train.sbatch reads the same files itself.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from mpo_dist.errors import ERROR_FILE_ENV, EXIT_USER_ERROR

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "stopped early after saving, resume me"
EXIT_CRASH = 1
OUTCOME_FILE_ENV = "MPO_DIST_OUTCOME_FILE"


def rank_exit_code(exit_code: int, steps_done: int) -> int:
    """What a training rank's process returns. Under our launchers a graceful stop (EXIT_REQUEUE) is recorded in the
    outcome file and becomes 0, so that torchrun neither kills a slower rank nor calls the job failed; the launcher turns
    it back into 75. `mpo-dist train` on its own returns 75 itself."""
    outcome_file = os.environ.get(OUTCOME_FILE_ENV)
    if exit_code != EXIT_REQUEUE or not outcome_file:
        return exit_code
    record = {"stopped_at_step": steps_done, "rank": int(os.environ.get("RANK", "0")),
              "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    with open(outcome_file, "a", encoding="utf-8") as handle:  # one short write per rank: lines do not interleave
        handle.write(json.dumps(record) + "\n")
    return 0


def stopped_step(outcome_file: Path) -> int | None:
    """The step at which every rank of the job recorded a graceful stop, or None if not every rank did."""
    text = outcome_file.read_text(encoding="utf-8") if outcome_file.is_file() else ""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not records:
        return None
    steps = {record["stopped_at_step"] for record in records}
    ranks = {record["rank"] for record in records}
    if len(steps) != 1 or ranks != set(range(records[0]["world_size"])):
        return None
    return steps.pop()


def _run_torchrun(torchrun_args: argparse.Namespace, report: Path) -> tuple[str | None, int | None]:
    """Run torchrun in this process, its agent's log lines going to `report`. Returns (torchrun's failure report, or
    None when every worker exited 0; the signal that stopped the launcher itself, or None)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    torch_log = logging.getLogger("torch.distributed")  # torch gives it its own stderr handler: replaced while we run
    handler = logging.FileHandler(report, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    own_handlers, torch_log.handlers = torch_log.handlers, [handler]
    try:
        run(torchrun_args)
        return None, None
    except ChildFailedError as failure:  # str(): the box torchrun prints, naming the root-cause rank and its exit code
        return f"ChildFailedError: {failure}", None
    except SignalException as signalled:
        return f"the launcher got signal {signalled.sigval}", int(signalled.sigval)
    finally:
        handler.close()
        torch_log.handlers = own_handlers


def main(argv: list[str]) -> int:
    """Run torchrun with `argv` and return the job's exit code, after printing its last line on stderr."""
    from torch.distributed.run import parse_args

    torchrun_args = parse_args(argv)  # a usage error exits here, before any file exists
    handle, report_name = tempfile.mkstemp(prefix="mpo-dist-torchrun-", suffix=".log")
    os.close(handle)
    report = Path(report_name)
    with tempfile.TemporaryDirectory(prefix="mpo-dist-job-") as job_dir:
        error_file, outcome_file = Path(job_dir) / "errors", Path(job_dir) / "outcome"
        os.environ[ERROR_FILE_ENV], os.environ[OUTCOME_FILE_ENV] = str(error_file), str(outcome_file)
        failure, signal_number = _run_torchrun(torchrun_args, report)
        errors = dict.fromkeys(error_file.read_text(encoding="utf-8").splitlines()) if error_file.is_file() else {}
        step = stopped_step(outcome_file)
    stopped = step is not None and (failure is None or signal_number is not None)
    keep_report = failure is not None and (bool(errors) or not stopped)  # kept only where its path is printed
    if keep_report:
        with open(report, "a", encoding="utf-8") as log:
            log.write(f"{failure}\n")
    else:
        report.unlink()
    if errors:
        if keep_report:
            print(f"torchrun's report of the failed ranks: {report}", file=sys.stderr)
        for line in errors:
            print(line, file=sys.stderr)
        return EXIT_USER_ERROR
    if stopped:
        print(f"mpo-dist train: stopped at step {step}: every rank saved it and exited; continue with --resume auto "
              f"(exit {EXIT_REQUEUE})", file=sys.stderr)
        return EXIT_REQUEUE
    if failure is None:
        return 0
    print(failure, file=sys.stderr)
    print(f"torchrun's log: {report}", file=sys.stderr)
    return EXIT_CRASH if signal_number is None else 128 + signal_number


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
