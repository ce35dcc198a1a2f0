"""User-facing stops: one clear paragraph, a non-zero exit, no traceback unless asked for."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or a stopped run: the message names the offending value and what would be valid.

    `run_folder` is set when the run left a checkpoint it can continue from, so the report adds the resume command.
    """

    def __init__(self, message: str, run_folder: Path | None = None) -> None:
        super().__init__(message)
        self.run_folder = run_folder


class RunInterrupted(BaseException):
    """Ctrl-C or SIGTERM: a BaseException like KeyboardInterrupt, so no `except Exception` swallows it."""

    def __init__(self, signum: int, message: str = "", run_folder: Path | None = None) -> None:
        super().__init__(message)
        self.signum, self.run_folder = signum, run_folder

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def brief(values, limit: int = 8) -> str:
    """A short, readable listing of values for an error message."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def report(message: str, title: str = "metarun error", after: str = "") -> None:
    """`message` (then the line `after`) on stderr, and in the run's log files (`cli.log`), so that a failed run's
    folder says why."""
    from rich.console import Console
    from rich.text import Text

    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 tells it; every rank exits alike
        return
    Console(stderr=True, soft_wrap=True).print(f"[bold red]{title}:[/] {message}", highlight=False, markup=True)
    if after:
        print(after, file=sys.stderr)
    record = logging.LogRecord("metarun", logging.ERROR, __file__, 0, f"{title}: {Text.from_markup(message)}", (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # not the console's: the message is on screen already
            handler.handle(record)


def unknown_setting(name: str, fields: list[str]) -> str:
    """`name` (dotted) is not among its section's `fields`: the nearest names, else all of them."""
    section, _, key = name.rpartition(".")
    fields = [f for f in fields if not f.startswith("_")]  # _target_ and _partial_ are set by the configs
    close = [f"{section}.{c}" if section else c for c in difflib.get_close_matches(key, fields, n=3)]
    hint = f"did you mean {' or '.join(close)}?" if close else f"the settings there are: {', '.join(fields)}."
    return f"{name} is not a setting, so nothing would read it; {hint}"


def unknown_option(group: str, option: str, options: list[str]) -> str:
    """`group=option` names no file of the config group: the nearest options, and all of them."""
    close = difflib.get_close_matches(option, options, n=1)
    guess = f"; did you mean {group}={close[0]}?" if close else "."
    return f"{group}={option} is not an option of {group}{guess} The options are: {', '.join(options)}."


def composition_error(error: Exception, added: tuple[str, ...] = ()) -> str:
    """Hydra's and OmegaConf's composition errors (bad override, unknown option, wrong type) as one paragraph;
    `added` are the settings the command takes with a leading + (Hydra's advice is right for those alone)."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        plugin = " Hydra's plugins add these options: pip install -e '.[sweep]'." if group.startswith("hydra/") else ""
        return unknown_option(group, option, error.options) + plugin
    text = " ".join(str(error).split("\nConfig search path")[0].split())
    cause = error.__cause__
    schema = getattr(cause, "object_type", None)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and fields and cause.key not in fields:
        if cause.full_key in added:
            return (f"{cause.full_key} is given with a leading +, as this command's base config lacks it (the run's "
                    f"algorithm may have it): +{cause.full_key}=<value>.")  # fmt: skip
        return unknown_setting(cause.full_key, fields)  # rather than Hydra's advice to add it with `+`
    if isinstance(cause, OmegaConfBaseException):
        detail = str(getattr(cause, "msg", cause)).splitlines()[0]  # the rest repeats the key and the schema's name
        text = f"{text.rstrip('.')}: {detail}."
    return f"{text} Check the setting's name and type; `metarun --cfg job` prints every setting with its value."


@contextlib.contextmanager
def reported_stops(debug: bool, resume_command: str) -> Iterator[None]:
    """A UserError becomes one paragraph and exit 2, Ctrl-C or SIGTERM one paragraph and exit 130 or 143; both end
    with the resume command when the run kept a checkpoint. `debug=true` re-raises UserError with its traceback."""
    try:
        with stop_signals():
            yield
    except UserError as error:
        if debug:
            raise
        report(
            str(error) + _resume_hint(error.run_folder, resume_command),
            after="(run again with debug=true for the traceback)",
        )
        sys.exit(EXIT_USER_ERROR)
    except RunInterrupted as stop:
        report(str(stop) + _resume_hint(stop.run_folder, resume_command), title="metarun stopped")
        sys.exit(stop.exit_code)


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, Any], None] | None = None) -> Iterator[None]:
    """Inside, Ctrl-C and SIGTERM go to `handler`; by default they raise RunInterrupted at once (meta-training
    passes its own, which finishes the step first)."""
    handler = handler or _raise_interrupt
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame) -> None:
    """Outside meta-training (which finishes its step first, see metarun.loop) a signal stops the run at once."""
    name = signal.Signals(signum).name
    raise RunInterrupted(signum, f"Stopped by {name} outside meta-training (loading data, or testing).")


def _resume_hint(run_folder: Path | None, command: str) -> str:
    if run_folder is None or not (run_folder / "checkpoints" / "last.pt").is_file():
        return ""
    return f" To continue this run: {command.format(folder=run_folder)}"
