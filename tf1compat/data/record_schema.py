"""A team's record schema (--features), and the loader of both plug-in flags.

Both flags name a function as `package.module:function`. The module must be importable
in every runner process (installed, or its folder on PYTHONPATH; check_parity's runners
inherit its environment). A plug-in that cannot be used ends the run before it starts
with exit 2 and one line naming the fix (PluginError); an exception raised inside the
team's own code (its module's import or its function's body) is the team's bug and
keeps its traceback.

The record parser (--features; unset: the seed's schema, `image` bytes and an int64
`label`):

    def parse(serialized) -> (image, label)

- `serialized`: a scalar tf.string tensor, one record of the TFRecord files. It is traced
  inside tf.data's map, in graph mode in train_graph: TensorFlow ops only, and nothing
  random, so that both runners read identical batches.
- `image`: a scalar tf.string of encoded image bytes (JPEG, PNG, GIF, BMP or WebP,
  decoded to 3 channels as the seed's images are), or a decoded image [height, width, 3]
  of any real dtype (cast to float32).
- `label`: an integer scalar in [0, num_classes).

The shared pipeline then pads and resizes, standardizes, one-hots, shuffles and batches
exactly as for the seed's records. The pre-flight check cannot read a foreign schema:
with --features it verifies every record's framing and data checksum only; under
--on_bad_record=skip it also runs every record through the parser and the decode once
and leaves out those that fail (data_check).

TensorFlow-free: the parser is traced by the pipeline (pipeline.py).
"""

import dataclasses
import importlib
import inspect
import re

from tf1compat.runs import errors

# A dotted module path, a colon, a dotted attribute path.
_SPEC = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')
SPEC_FORMAT = 'package.module:function'
# The built-in models' modules under the paths the docs gave before the package had wings:
# a --model flag a team wrote down then still builds the same model.
_MOVED_MODULES = {'tf1compat.model': 'tf1compat.train.models.convnet',
                  'tf1compat.resnet': 'tf1compat.train.models.resnet'}


class PluginError(errors.UsageError):
  """A --model or --features plug-in that cannot be used; the message names the fix."""

  # Raised while tf.data traces a --features parser, it would otherwise reach the user as
  # AutoGraph's rewrite, the staging traceback in its message: AutoGraph passes an
  # exception with this attribute through as it is.
  ag_pass_through = True


def is_spec(spec):
  """Whether `spec` reads `package.module:function` (the flags' validator)."""
  return bool(_SPEC.fullmatch(spec or ''))


def load(flag, spec):
  """The function that `spec` ('package.module:function') names, for --`flag`.

  Raises PluginError when the module, a module it imports or the attribute does not
  exist, or the attribute is not callable; other errors raised while importing the
  module are the module's own and propagate.
  """
  where = f'--{flag}={spec}'
  if not is_spec(spec):
    raise PluginError(f'{where}: name a function as {SPEC_FORMAT}, e.g. team_model:build')
  module_name, _, attribute = spec.partition(':')
  module_name = _MOVED_MODULES.get(module_name, module_name)
  try:
    target = importlib.import_module(module_name)
  except SystemExit as e:
    raise exited(where, f'importing {module_name}', e) from e
  except ModuleNotFoundError as e:
    if e.name and (module_name + '.').startswith(e.name + '.'):
      raise PluginError(f'{where}: no module named {e.name!r}; put the folder that holds '
                        f'{module_name.replace(".", "/")}.py on PYTHONPATH, or install its '
                        'package') from e
    raise PluginError(f'{where}: importing {module_name} failed ({e}); install what it '
                      'imports') from e
  for part in attribute.split('.'):
    if not hasattr(target, part):
      raise PluginError(f'{where}: {module_name} has no {part!r}; name a function it '
                        f'defines ({SPEC_FORMAT})')
    target = getattr(target, part)
  if not callable(target):
    raise PluginError(f'{where}: {module_name}.{attribute} is not callable (it is of type '
                      f'{type(target).__name__}); name a function ({SPEC_FORMAT})')
  return target


@dataclasses.dataclass(frozen=True)
class Parser:
  """A --features record parser: `spec` names it, calling it calls `function`."""
  spec: str
  function: object

  def __call__(self, serialized):
    try:
      return self.function(serialized)
    except SystemExit as e:
      raise exited(f'--features={self.spec}', 'the parser', e) from e


def exited(where, what, error):
  """The PluginError of a plug-in that called sys.exit: a team's script exits, a plug-in
  must not (an exit 0 there ended a runner silently, with no run directory)."""
  return PluginError(f'{where}: {what} called sys.exit({error.code!r}) instead of returning; '
                     'a plug-in returns (or raises an exception) and never exits the runner: '
                     'remove the sys.exit call')


def load_parser(spec):
  """The Parser of --features=`spec`, or None for the seed's schema (spec None)."""
  if not spec:
    return None
  function = load('features', spec)
  check_call(function, f'--features={spec}', 'parse(serialized)', None)
  return Parser(spec, function)


def check_call(function, where, contract, *args, **kwargs):
  """PluginError when `function` cannot be called with `args` and `kwargs` as the runner
  will call it: the TypeError of a signature that does not fit (build(num_classes, ...),
  which takes keras as num_classes) surfaced inside the run as a fault with a traceback."""
  try:
    signature = inspect.signature(function)
  except (TypeError, ValueError):
    return  # No readable signature (a builtin): the call itself will tell.
  try:
    signature.bind(*args, **kwargs)
  except TypeError as e:
    raise PluginError(f'{where}: its signature {function.__name__}{signature} cannot be called '
                      f'as {contract} ({e}); docs/own-migration.md, "Your own model", '
                      'gives the contract') from None
