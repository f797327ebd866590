"""Shared edges of the command-line tools: bad input is one line on stderr and exit status 2."""
from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


def fail(message: str, prog: str | None = None) -> NoReturn:
  prefix = f'{prog}: error: ' if prog else 'error: '
  print(prefix + ' '.join(str(message).split()), file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str], *, allow_positional: bool = False,
                prog: str | None = None) -> list[str]:
  """absl's parser, but a bad flag is one line on stderr instead of a usage dump.

  Use as `app.run(main, flags_parser=parse_flags)`.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0], prog)
  if not allow_positional and len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])}', prog)
  return rest
