"""What every command-line program shares: a quiet TensorFlow start-up, `--help`, one-line errors.

TensorFlow's first import prints C++ start-up lines (oneDNN, CUDA probing, CPU features;
on a machine without a GPU also a cuInit error), some of them whatever
`TF_CPP_MIN_LOG_LEVEL` says. `quiet_start` runs before that first import: unless the user
set `TF_CPP_MIN_LOG_LEVEL` or passed `--verbosity=1` (or higher), it sets the level to 3 and
holds back what the import writes to stderr (replayed if the import fails). The package
`__init__`s call `quiet_start_under_python_m`, so `python -m trainer.train` and friends start
quietly too; the console commands (`axial_keras.commands`) are `launch(MODULE)`, which
starts quietly before importing the module.

`run(main, define_flags, usage)` is `absl.app.run` with: `--help` (`-h`, `-?`) listing the
program's own flags with their meaning and exiting 0; a bad flag, a `UsageError` or any
other error reported as `error: ...` on one line (plus its cause), exit status 1; the
traceback only with `--verbosity=1`; TensorFlow's own Python INFO lines hidden below that.

Example (the end of a CLI module):
>>> if __name__ == "__main__":
...     cli.run(main, define_flags, __doc__)
"""

import contextlib
import importlib
import logging as std_logging
import os
import sys
import tempfile
import textwrap
from typing import Callable, Iterator, List, Optional, Sequence

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "3"
HELP_ARGS = ("--help", "-help", "--helpshort", "-h", "-?")

# Modules of the optional extras and what to install when one is missing.
EXTRAS = {
    "ai_edge_litert": "export", "tf2onnx": "export", "onnx": "export", "onnxruntime": "export",
    "tensorboard": "train", "tf_keras": "train", "matplotlib": "train",
}


def verbosity(argv: Sequence[str]) -> int:
    """The value of absl's `--verbosity`/`-v` in `argv` (0 when absent or not a number)."""
    value = None
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--":
            break
        for name in ("--verbosity", "-verbosity", "-v", "--v"):
            if arg.startswith(name + "="):
                value = arg[len(name) + 1:]
            elif arg == name and index + 1 < len(args):
                value = args[index + 1]
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def tf_log_level() -> int:
    """TensorFlow's C++ log level from `TF_CPP_MIN_LOG_LEVEL` (0 = everything)."""
    try:
        return int(os.environ.get(TF_LOG_LEVEL, "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Holds back what the process writes to file descriptor 2; replays it on an error."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_start(argv: Optional[Sequence[str]] = None) -> None:
    """Imports TensorFlow without its C++ start-up lines unless asked for.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` when the user set no level and `argv` has no
    `--verbosity` of 1 or more; a user's level is kept. The import's own INFO lines, which
    TensorFlow prints whatever the level, are held back at any level above 0. Does nothing
    once TensorFlow is imported.

    Args:
        argv: list of str. The command line (default `sys.argv`).
    """
    if "tensorflow" in sys.modules:
        return
    argv = sys.argv if argv is None else argv
    if TF_LOG_LEVEL not in os.environ:
        os.environ[TF_LOG_LEVEL] = "0" if verbosity(argv) >= 1 else QUIET_TF_LOG_LEVEL
    if tf_log_level() == 0:
        import tensorflow  # noqa: F401
        return
    with held_stderr():
        import tensorflow  # noqa: F401


def quiet_start_under_python_m() -> None:
    """`quiet_start` when this process is `python -m PACKAGE.MODULE` locating its module.

    While `python -m` imports the parent packages, `sys.argv[0]` is `-m` (Python's
    documented behaviour); a package `__init__` calls this so that the module's own imports
    find TensorFlow already started quietly.
    """
    if sys.argv[:1] == ["-m"]:
        quiet_start(sys.argv)


def missing_extra_message(error: ImportError) -> Optional[str]:
    """The install instruction for a module of an optional extra, or None."""
    name = (error.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return (f"{name} is not installed; it comes with the {extra} extra: "
            f"pip install 'axial-keras[{extra}]'")


def error_lines(error: BaseException) -> List[str]:
    """`error: ...` for `error` and `cause: ...` for what raised it, one line each."""
    def line(exception: BaseException) -> str:
        text = " ".join(str(exception).split())
        return f"{type(exception).__name__}: {text}" if text else type(exception).__name__

    if isinstance(error, ImportError):
        message = missing_extra_message(error) or " ".join(str(error).split())
    else:
        message = line(error)
    lines = [f"error: {message}"]
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if cause is not None:
        lines.append(f"cause: {line(cause)}")
    return lines


def _fail(lines: Sequence[str], exitcode: int = 1) -> None:
    sys.stderr.write("".join(f"{line}\n" for line in lines))
    sys.exit(exitcode)


def help_text(usage: Optional[str], flag_names: Sequence[str]) -> str:
    """The program's docstring and its own flags, each with its meaning.

    Args:
        usage: str. The program's docstring.
        flag_names: list of str. The flags the program defined.
    """
    from absl import flags

    values = flags.FLAGS
    names = set(flag_names)
    # Sorted, so the text does not depend on which modules registered flags first.
    modules = sorted(module for module, module_flags in values.flags_by_module_dict().items()
                     if names & {flag.name for flag in module_flags})
    listed = "\n".join(values.module_help(module).strip("\n") for module in modules)
    logging_help = textwrap.fill(
        "--verbosity (-v): logging level: -1 warnings only, 0 (the default) information, "
        "1 also TensorFlow's C++ log, its INFO lines and error tracebacks "
        "(TF_CPP_MIN_LOG_LEVEL is respected when set).", width=88, initial_indent="  ",
        subsequent_indent="    ")
    return (f"{(usage or '').rstrip()}\n\nflags:\n\n{listed}\n\n{logging_help}\n"
            "  --helpfull: also the flags of absl and the libraries.\n")


class _HideTensorFlowInfo(std_logging.Filter):
    """Drops TensorFlow's own Python INFO records (warnings and errors pass)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or (
            f"{os.sep}tensorflow{os.sep}" not in record.pathname)


def run(main: Callable[[List[str]], Optional[int]], define_flags: Callable[[], None],
        usage: Optional[str] = None) -> None:
    """Defines the flags and runs `main` under `absl.app.run` as the module docstring says.

    Args:
        main: callable. The program, called with the remaining arguments.
        define_flags: callable. Defines the program's flags.
        usage: str. The program's docstring, shown by `--help`.
    """
    from absl import app, flags, logging

    quiet_start()
    before = set(flags.FLAGS)
    define_flags()
    own_flags = sorted(set(flags.FLAGS) - before)
    verbose = verbosity(sys.argv) >= 1

    def parse(argv: List[str]) -> List[str]:
        options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if any(arg in HELP_ARGS for arg in options):
            sys.stdout.write(help_text(usage, own_flags))
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            _fail([f"error: {error}", "Try --help for the flags and their meaning."])

    def checked_main(argv: List[str]) -> Optional[int]:
        if not verbose:
            logging.get_absl_logger().addFilter(_HideTensorFlowInfo())
            std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
        try:
            return main(argv)
        except app.UsageError as error:
            _fail([f"error: {error}", "Try --help for the flags and their meaning."],
                  error.exitcode)
        except Exception as error:  # pylint: disable=broad-except
            if verbose:
                raise
            _fail(error_lines(error) + ["(--verbosity=1 shows the traceback)"])

    app.run(checked_main, flags_parser=parse)


def launch(module_name: str) -> None:
    """A console command: quiet start, import the CLI module `module_name`, `run` it.

    A module that cannot be imported (Orbit or an extra missing) is one `error:` line.

    Args:
        module_name: str. A module with `main(argv)`, `define_flags()` and a docstring.
    """
    quiet_start()
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if verbosity(sys.argv) >= 1:
            raise
        _fail(error_lines(error))
    run(module.main, module.define_flags, module.__doc__)
