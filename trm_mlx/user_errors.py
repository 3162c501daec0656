"""The command lines' answer to a user's mistake: one line naming the problem and exit status 1, rather than a
traceback. ``TRM_MLX_FULL_ERROR=1`` shows the traceback instead, as ``HYDRA_FULL_ERROR=1`` does for Hydra."""

import os
import sys
from contextlib import contextmanager

import pydantic

FULL_ERROR = "TRM_MLX_FULL_ERROR"


def describe_validation(error: pydantic.ValidationError) -> str:
    """``lr: Input should be a valid number ...; epochs: ...`` from a config that failed validation."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, item["loc"]))
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


@contextmanager
def one_line_errors(prog: str):
    """Turn the errors a user's input causes (bad config values, missing or malformed files) into one line."""
    try:
        yield
    except pydantic.ValidationError as e:
        if os.environ.get(FULL_ERROR) == "1":
            raise
        sys.exit(f"{prog}: {describe_validation(e)}")
    except (OSError, ValueError) as e:
        if os.environ.get(FULL_ERROR) == "1":
            raise
        sys.exit(f"{prog}: " + str(e).replace("\n", " "))
