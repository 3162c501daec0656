"""The command lines' answer to a user's mistake: one line naming the problem and exit status 1, rather than a
traceback. ``TRM_MLX_FULL_ERROR=1`` shows the traceback instead, as ``HYDRA_FULL_ERROR=1`` does for Hydra."""

import os
import sys
import warnings
from contextlib import contextmanager

import pydantic

from trm_mlx.model.config import TRMConfig

FULL_ERROR = "TRM_MLX_FULL_ERROR"


def describe_validation(error: pydantic.ValidationError) -> str:
    """``lr: Input should be a valid number ...; arch.L_cycles: ...`` from a config that failed validation: the
    keys as the command line names them (the model's config is validated on its own, so its keys get ``arch.``)."""
    section = ["arch"] if error.title == TRMConfig.__name__ else []
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, section + list(item["loc"]))) if item["loc"] else ""
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


@contextmanager
def one_line_errors(prog: str):
    """Turn the errors a user's input causes (bad config values, missing or malformed files) into one line, and
    the warnings meant for the user (``UserWarning``) into ``<prog>: warning: ...`` lines."""
    show_default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and os.environ.get(FULL_ERROR) != "1":
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            show_default(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    except pydantic.ValidationError as e:
        if os.environ.get(FULL_ERROR) == "1":
            raise
        sys.exit(f"{prog}: {describe_validation(e)}")
    except (OSError, ValueError) as e:
        if os.environ.get(FULL_ERROR) == "1":
            raise
        sys.exit(f"{prog}: " + str(e).replace("\n", " "))
