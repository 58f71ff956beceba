r"""Weight maps: ordered regex rewrites that give two codes' variables the same names.

A team's TF1 loop names its variables as TF1 does ('hidden/kernel', or 'hidden/kernel:0'
where it does not drop the output index as recorder's helpers do), its Keras 3 port as
Keras does ('sequential/dense/kernel'). A weight map rewrites the snapshot keys of
the run it is given for, so that compare_runs pairs each variable with its counterpart
(`compare_runs --weight_map=RUN_DIR=MAP`), and it lets the port load the legacy loop's
initial weights under its own names (team_models.load_weights).

A map is a list of rules, one per line of a file (blank lines and lines starting with
'#' are skipped) or separated by ';' when given inline:

    hidden/(kernel|bias) -> sequential/dense/\1
    logits/(kernel|bias) -> sequential/dense_1/\1

Each key is rewritten by the first rule whose PATTERN (Python `re`) matches the whole
key; REPLACEMENT may use its groups (\1, \g<name>). A key that no rule matches is an
error, never passed through or dropped (end a map with `(.*) -> \1` to keep the other
names as they are), and so are two keys rewritten to one name. TensorFlow-free.
"""

import dataclasses
import os
import re


from tf1compat.runs import errors
from tf1compat.runs import run_files
from tf1compat.runs import user_files

ARROW = '->'
INLINE_SEPARATOR = ';'
# How a replacement refers to a group of its pattern: \1 or \g<1> or \g<name>.
_GROUP_REFERENCE = re.compile(r'\\(?:(\d+)|g<(\w+)>)')
# Keys named in a one-line error, at most.
_LISTED = 5


@dataclasses.dataclass(frozen=True)
class Rule:
  """One rewrite: keys that `pattern` matches as a whole become `replacement`."""
  pattern: re.Pattern
  replacement: str
  where: str  # 'FILE line N' or 'rule N': how an error names the rule

  def rename(self, key):
    """The rewritten `key`, or None when the pattern does not match all of it."""
    match = self.pattern.fullmatch(key)
    return match.expand(self.replacement) if match else None


def listed(keys):
  """`keys` (sorted) for a one-line message: the first few, then how many more."""
  more = f' and {len(keys) - _LISTED} more' if len(keys) > _LISTED else ''
  return ', '.join(keys[:_LISTED]) + more


def _rule(text, where, source):
  pattern, arrow, replacement = text.partition(ARROW)
  pattern, replacement = pattern.strip(), replacement.strip()
  if not arrow or not pattern:
    raise errors.UsageError(f'weight map {source}, {where}: {text.strip()!r} is not a rule '
                            f'"PATTERN {ARROW} REPLACEMENT" (e.g. "hidden/(.*) {ARROW} dense/\\1")')
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise errors.UsageError(f'weight map {source}, {where}: {pattern!r} is not a regular '
                            f'expression ({e}); fix the pattern') from e
  for number, name in _GROUP_REFERENCE.findall(replacement):
    reference = number or name
    known = (int(reference) <= compiled.groups if reference.isdigit()
             else reference in compiled.groupindex)
    if not known:
      raise errors.UsageError(f'weight map {source}, {where}: the replacement {replacement!r} '
                              f'refers to group {reference}, which {pattern!r} does not have')
  return Rule(compiled, replacement, where)


class WeightMap:
  """Ordered rules that rename weight keys; `source` names the map in errors."""

  def __init__(self, rules, source):
    self.rules = tuple(rules)
    self.source = source

  @classmethod
  def parse(cls, text, source):
    """The map in `text` (one rule per line), read from `source` (named in errors)."""
    rules = []
    for number, line in enumerate(text.splitlines(), start=1):
      if line.strip() and not line.lstrip().startswith('#'):
        rules.append(_rule(line, f'line {number}', source))
    return cls._checked(rules, source)

  @classmethod
  def load(cls, spec):
    """The map `spec` names: inline rules ('PATTERN -> REPLACEMENT; ...') or a file of rules.

    Raises errors.UsageError for a missing file and for a malformed rule.
    """
    if ARROW in spec:
      rules = [_rule(text, f'rule {number}', 'given inline')
               for number, text in enumerate(spec.split(INLINE_SEPARATOR), start=1)
               if text.strip()]
      return cls._checked(rules, 'given inline')
    if not os.path.isfile(spec):
      raise errors.UsageError(f'weight map {spec}: no such file; give a file of rules '
                              f'"PATTERN {ARROW} REPLACEMENT", one per line, or the rules inline')
    text = user_files.read_text(spec, 'weight map ', f'write it as UTF-8 text, one rule '
                                f'"PATTERN {ARROW} REPLACEMENT" per line')
    return cls.parse(text, spec)

  @classmethod
  def _checked(cls, rules, source):
    if not rules:
      raise errors.UsageError(f'weight map {source} holds no rules; write one '
                              f'"PATTERN {ARROW} REPLACEMENT" per line')
    return cls(rules, source)

  def rename(self, key):
    """`key` rewritten by the first rule that matches it whole, or None."""
    for rule in self.rules:
      renamed = rule.rename(key)
      if renamed is not None:
        return renamed
    return None

  def rename_all(self, keys, owner):
    """{key: new key} for every key of `owner` (a run directory or a weights file).

    Raises errors.UsageError naming the keys no rule matches, or two keys that become one.
    """
    renamed = {key: self.rename(key) for key in keys}
    unmatched = sorted(key for key, new in renamed.items() if new is None)
    if unmatched:
      raise errors.UsageError(
          f'weight map {self.source}: no rule matches {len(unmatched)} weight(s) of {owner}: '
          f'{listed(unmatched)}; add rules for them (end the map with "(.*) {ARROW} \\1" '
          'to keep the other names)')
    seen = {}
    for key, new in sorted(renamed.items()):
      if new in seen:
        raise errors.UsageError(f'weight map {self.source}: {seen[new]} and {key} of {owner} both '
                                f'become {new}; make the rules tell them apart')
      seen[new] = key
    return renamed

  def apply(self, weights, owner):
    """{new key: array} of `weights` ({key: array} of `owner`), renamed (rename_all)."""
    return {new: weights[key] for key, new in self.rename_all(weights, owner).items()}


def maps_for_runs(specs, run_dirs, controls=()):
  """{run directory: WeightMap} from compare_runs' --weight_map values 'RUN_DIR=MAP'.

  Keys are the run directories as given in `run_dirs` and `controls`. A control is
  the reference's own code run again, so it takes the reference's map unless a value
  names it. Raises errors.UsageError for a value that is not RUN_DIR=MAP, names no run
  compared, or names one run twice.
  """
  given = [p for p in (*run_dirs, *controls) if p]
  by_real_path = {}
  for path in given:
    by_real_path.setdefault(os.path.realpath(path), path)
  maps = {}
  for spec in specs or ():
    run_dir, equals, map_spec = spec.partition('=')
    if not equals or not run_dir or not map_spec:
      raise errors.UsageError(f'--weight_map={spec}: give RUN_DIR=MAP, MAP a file of rules or '
                              f'rules inline ("PATTERN {ARROW} REPLACEMENT; ...")')
    path = by_real_path.get(os.path.realpath(run_dir))
    if path is None:
      raise errors.UsageError(f'--weight_map={spec}: {run_dir} is none of the runs compared '
                              f'({", ".join(given)}); name one of them')
    if path in maps:
      raise errors.UsageError(f'--weight_map names {run_dir} twice; give each run one map')
    maps[path] = WeightMap.load(map_spec)
  for control in controls:
    if control not in maps and run_dirs and run_dirs[0] in maps:
      maps[control] = maps[run_dirs[0]]
  return maps


def snapshot_keys(run_dir):
  """The weight keys of the first snapshot of `run_dir` (as written), or None without one."""
  steps = run_files.snapshot_steps_in(run_dir)
  if not steps:
    return None
  return list(user_files.load_npz(run_files.snapshot_path(run_dir, steps[0]), '',
                                  "rerun the run's command with --overwrite to write it again"))


def check_aligned(paths, maps):
  """Checks that after `maps` ({run dir: WeightMap}) every run in `paths` names its
  weights as the first does, so that no variable goes unpaired.

  Runs without a snapshot are left to the tiers. Raises errors.UsageError naming the
  unmatched keys of both sides.
  """
  reference = paths[0]
  keys = {}
  for path in paths:
    found = snapshot_keys(path)
    if found is not None:
      keys[path] = set(maps[path].rename_all(found, path).values() if path in maps else found)
  if reference not in keys:
    return
  for path in paths[1:]:
    if path not in keys or keys[path] == keys[reference]:
      continue
    extra = sorted(keys[path] - keys[reference])
    missing = sorted(keys[reference] - keys[path])
    raise errors.UsageError(
        f'--weight_map: weights unmatched after the maps: {path} has {listed(extra) or "none"} '
        f'that {reference} lacks, and lacks {listed(missing) or "none"}; fix the rules '
        '(--weight_map=RUN_DIR=MAP) so that both runs name each variable alike')
