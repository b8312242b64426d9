"""The ``gentrain`` entry point: a Hydra application that runs the task chosen by ``task=``."""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from gentrain.config import CONFIG_DIR, compose_app_config
from gentrain.errors import GentrainError


#: The file where the jobs of a sweep record that they failed (one line each; the reason is printed by the job). main()
#: names it in the environment before Hydra launches, so jobs that a launcher runs in other processes (joblib,
#: submitit_local) record theirs too, and exits non-zero when any did.
_FAILED_JOBS_ENV = "GENTRAIN_FAILED_JOBS_FILE"


def _record_failed_job(num: int) -> None:
    path = os.environ.get(_FAILED_JOBS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"job {num}\n")


# absolute: a console script has no calling file for Hydra to resolve a relative path against
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    """Run the task; return the number ``optimize`` names (what Hydra's Optuna sweeper optimises; None for tasks without one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from gentrain.build import build
    from gentrain.engine.trainer import Interrupted

    from gentrain.engine import distributed

    from gentrain.tasks.optimize import value

    from gentrain.config import apply_debug

    try:
        cfg = apply_debug(cfg, list(HydraConfig.get().overrides.task))  # debug=tiny's sizes (every group's tiny: block taken out)
        task = build(cfg.task, "task")
        result = task(cfg)
        distributed.shutdown()  # under torchrun: leave the process group cleanly
        return value(cfg, result)
    except GentrainError as e:
        # one line, no traceback: the message names the fix (a stop under torchrun: rank 0 speaks for the job)
        if not isinstance(e, Interrupted) or distributed.current().main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        if not isinstance(e, Interrupted):
            _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))  # the folder Hydra made for a run that was refused
        if HydraConfig.get().mode == RunMode.MULTIRUN and not isinstance(e, Interrupted):
            _record_failed_job(HydraConfig.get().job.num)  # the sweep goes on with its other jobs
            return float("nan")  # an optimising sweeper records a failed trial and goes on
        sys.exit(getattr(e, "exit_code", 2))


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` and its parents below the current directory while they are empty (a refused run leaves no
    ``outputs/<date>/<time>/`` behind)."""
    here = Path.cwd().resolve()
    folder = folder.resolve()
    while folder != here and here in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


_SIMPLE_VALUE = re.compile(r"^[\w.\-/:]+$")


#: A sweep with more jobs than this is checked value by value (each option in one job) rather than job by job.
_FULL_CHECK_LIMIT = 256


def _parse(argv: list[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return args


def _runs_to_check(args: Any) -> list[list[str]] | None:
    """The override lists to compose before Hydra starts: the run, or for ``-m`` every job of the sweep (every
    option of every list at least once when the sweep is very large). None where Hydra should answer alone
    (help, --info, another config, sweeps of ranges or globs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return None
    if args.config_path or args.config_name or args.config_dir:
        return None
    overrides = OverridesParser.create().parse_overrides(args.overrides)  # a syntax error raises here
    if not args.multirun:
        return [list(args.overrides)]
    choices: list[list[str]] = []
    for o in overrides:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        if o.value_type == ValueType.INTERVAL_SWEEP:
            continue  # a sweeper's search space (Optuna's interval): the jobs are checked with the key's configured value
        listed = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP, ValueType.RANGE_SWEEP)
        values = list(o.sweep_string_iterator()) if o.value_type in listed else []
        if not values or not all(_SIMPLE_VALUE.match(v) for v in values):
            return None
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    if math.prod(len(c) for c in choices) <= _FULL_CHECK_LIMIT:
        return [list(job) for job in itertools.product(*choices)]
    first = [c[0] for c in choices]
    return [first] + [first[:i] + [v] + first[i + 1 :] for i, c in enumerate(choices) for v in c[1:]]


def _one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line (the options it lists kept, its search path dropped)."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    head, rest = lines[0].rstrip("."), [line for line in lines[1:] if line]
    missing = re.search(r"Could not find '([\w/]+)/([^']*)'", head)
    if missing and rest and rest[0].startswith("Available options"):
        group, option = missing.groups()
        plugin = (f"; {group} options beyond Hydra's own come from plugins: the Optuna sweeper and the joblib and submitit "
                  'launchers install with pip install "gentrain[sweeps]"') if group in ("hydra/sweeper", "hydra/launcher") else ""
        return f"unknown {group} {option!r}; choose one of: {', '.join(rest[1:])} (e.g. {group}={rest[1]}){plugin}"
    append = next((line.split()[-1] for line in rest if line.startswith("To append to your config use")), None)
    if head.startswith("Could not override") and append:
        key = head.removeprefix("Could not override ").strip("'")
        return _group_key_hint(key, append.removeprefix("+")) or (
            f"{key} is not an option here (check its spelling; gentrain --cfg job lists the options); to add a new key use {append}")
    return "; ".join([head, *(line.replace("\\'", "'") for line in rest[:3])])


def _group_key_hint(key: str, override: str) -> str | None:
    """For ``group.key=value`` where the run's ``group`` option lacks ``key`` or no option of it is chosen (say
    ``sampler.guidance=3`` in task=sample, whose sampler is the checkpoint's): the options of the group that have it."""
    from omegaconf import OmegaConf

    from gentrain.config import CONFIG_DIR

    group, _, leaf = key.partition(".")
    folder = CONFIG_DIR / group
    if not leaf or not folder.is_dir():
        return None
    absent = object()
    having = [p.stem for p in sorted(folder.glob("*.yaml")) if OmegaConf.select(OmegaConf.load(p), leaf, default=absent) is not absent]
    if not having:
        return None
    return (f"{key} is not a key of this run's {group} (none is chosen, or its option lacks it); the {group} options that "
            f"have it: {', '.join(having)}; name one with it, e.g. {group}={having[0]} {override}")


def _precheck(argv: list[str]) -> None:
    """Compose the config(s) the way Hydra will and refuse bad overrides and bad values with one line and exit 2,
    before Hydra prints its multi-line report and before any job of a sweep runs."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from hydra.errors import OverrideParseException

    args = _parse(argv)
    if args.shell_completion and not any(o.split("=", 1)[0] in ("install", "uninstall", "query") for o in args.overrides):
        print("error: --shell-completion needs what to do: gentrain --shell-completion install=bash "
              "(or uninstall=bash; zsh, fish likewise)", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        runs = _runs_to_check(args) or []
    except OverrideParseException as e:  # a syntax error in an override: Hydra's grammar message, one line
        print(f"error: cannot parse the overrides: {_one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)
    semantic = not args.cfg  # --cfg prints the config: it need not be trainable
    try:
        for i, overrides in enumerate(runs):
            cfg = compose_app_config(overrides)
            if i == 0:
                _check_writable(cfg, args.multirun)
                if args.multirun and semantic:
                    from gentrain.tasks.optimize import check_sweeper

                    try:
                        check_sweeper(cfg)
                    except GentrainError as e:
                        print(f"error: {e}", file=sys.stderr, flush=True)
                        sys.exit(2)
            target = str(OmegaConf.select(cfg, "task._target_", default=""))
            if semantic and target.endswith(".train"):
                from gentrain.spec import run_spec as check  # one validation pass per job: nothing is built

                HydraConfig.instance().set_config(cfg)  # group choices for messages, as in the real run
                with open_dict(cfg):
                    del cfg["hydra"]
                try:
                    check(cfg)
                except GentrainError as e:
                    job = f" (sweep job {' '.join(overrides)})" if len(runs) > 1 else ""
                    print(f"error: {e}{job}", file=sys.stderr, flush=True)
                    sys.exit(2)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def _check_writable(cfg: Any, multirun: bool) -> None:
    """Refuse an output folder nothing can be written to (Hydra would fail creating it with a traceback)."""
    from omegaconf import OmegaConf

    from gentrain.engine.rundir import writable_error

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    where = OmegaConf.select(cfg, key, default=None)
    problem = writable_error(where) if where else None
    if problem:
        print(f"error: cannot write the run to {where}: {problem}; point {key} at a writable folder", file=sys.stderr, flush=True)
        sys.exit(2)


def _resume_in_place(argv: list[str]) -> list[str]:
    """``trainer.resume=<run dir>`` continues that run in its own directory: Hydra is told to use it as the run dir."""
    from gentrain.spec import Resume

    args = _parse(argv)
    if args.multirun or any(o.startswith("hydra.run.dir=") for o in args.overrides):
        return argv
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "trainer.resume" and Resume.parse(value).run_dir is not None:
            quoted = value if _SIMPLE_VALUE.match(value) else "'" + value.replace("'", "\\'") + "'"
            return [*argv, f"hydra.run.dir={quoted}"]
    return argv


def main() -> None:
    from gentrain.engine.signals import exit_now, stopping

    try:
        _main()
    except SystemExit as e:
        if stopping() and isinstance(e.code, int):  # stopped (or a rank died): exit with the stop handlers still in place
            exit_now(e.code)
        raise


def _main() -> None:
    from gentrain.engine.signals import install_process_handlers

    # SIGINT/SIGTERM before or after training (setup, reports): one line and exit 128 + signal; during training the
    # trainer handles them; once a stop is under way, further ones print one line (also where the shell ignores SIGINT)
    install_process_handlers()
    if "--version" in sys.argv[1:]:  # gentrain's version, not Hydra's
        from gentrain.help import version_line

        print(version_line())
        sys.exit(0)
    if _parse(sys.argv[1:]).help:  # every key of the config the overrides compose, with its meaning (--hydra-help: Hydra's)
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from gentrain.help import print_help

        try:
            print_help(list(_parse(sys.argv[1:]).overrides))
        except (HydraException, OmegaConfBaseException) as e:
            print(f"error: {_one_line(str(e))}", file=sys.stderr, flush=True)
            sys.exit(2)
        sys.exit(0)
    fd, failures = tempfile.mkstemp(prefix="gentrain-failed-jobs-", suffix=".txt")
    os.close(fd)
    os.environ[_FAILED_JOBS_ENV] = failures
    try:
        argv = _resume_in_place(sys.argv[1:])
        sys.argv[1:] = argv
        _precheck(argv)
        _app()
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"error: stopped by {name} outside training steps; checkpoints already written are intact", file=sys.stderr, flush=True)
        sys.exit(128 + signal.Signals[name].value)
    finally:
        failed = sorted(set(Path(failures).read_text().split("\n")) - {""}, key=lambda j: int(j.split()[-1]))
        os.unlink(failures)
    if failed:
        print(f"error: {len(failed)} sweep job(s) failed ({', '.join(failed)}); each printed its reason above", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
