"""Writes docs/config.md, the reference of every config field, from the code.

  python scripts/config_reference.py          # (re)write docs/config.md
  python scripts/config_reference.py --check  # exit 1 when docs/config.md is stale

Defaults come from the configs' `get_config()`; a field's meaning from its comment in the config
file (on its line, or the comment block just above it); its valid values from the checks of
`efficiency/config.py`: the `RANGES` table, the `_choice` / `_known` calls (whose choices are the
registries) and `_positive`. A field with no comment fails the run, so every field has a meaning.
"""

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ml_collections  # noqa: E402

from configs import default, finetune  # noqa: E402
from efficiency import config as config_module  # noqa: E402

OUTPUT = ROOT / "docs" / "config.md"
# (config file, get_config, the heading of the fields it adds to the default config)
CONFIGS = (
    ("configs/default.py", default.get_config, "Training (`configs/default.py`)"),
    ("configs/finetune.py", finetune.get_config, "Fine-tuning additions (`configs/finetune.py`)"),
)


def flatten(node: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  """Leaf fields by dotted name, in the order they were set."""
  fields = {}
  for name, value in node.items():
    path = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      fields.update(flatten(value, f"{path}."))
    else:
      fields[path] = value
  return fields


def comments(path: Path) -> dict[str, str]:
  """Each `c.FIELD = ...` line's comment: its own, after the block of comment lines above it."""
  found, block = {}, []
  tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
  line_tokens: list[tokenize.TokenInfo] = []
  for tok in tokens:
    if tok.type not in (tokenize.NEWLINE, tokenize.NL):
      line_tokens.append(tok)
      continue
    kinds = [t for t in line_tokens if t.type not in (tokenize.INDENT, tokenize.DEDENT)]
    line_tokens = []
    if not kinds:
      block = []
    elif kinds[0].type == tokenize.COMMENT:
      block.append(kinds[0].string.lstrip("#").strip())
    else:
      text = "".join(t.string for t in kinds[:1])
      names = [t.string for t in kinds]
      if text == "c" and "=" in names and names[1] == ".":
        field = "".join(names[2 : names.index("=")])
        own = [t.string.lstrip("#").strip() for t in kinds if t.type == tokenize.COMMENT]
        found[field] = " ".join(block + own)
      block = []
  return found


def checks() -> dict[str, str]:
  """Valid values by field, read from efficiency/config.py's checks."""
  valid = {}
  for field, low, high, kind in config_module.RANGES:
    left = "(" if "low open" in kind else "["
    right = ")" if "high open" in kind or high is None else "]"
    span = f"{left}{low}, {'inf' if high is None else high}{right}"
    valid[field] = f"{'integer in ' if kind == 'int' else ''}{span}"
  tree = ast.parse(Path(config_module.__file__).read_text())
  names = vars(config_module)
  for call in ast.walk(tree):
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
      continue
    args = call.args
    literal = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if call.func.id in ("_choice", "_known") and literal and len(args) == 3:
      choices = eval(compile(ast.Expression(args[2]), "<config>", "eval"), names)  # noqa: S307
      valid[literal[0]] = " \\| ".join(f"`{c}`" for c in sorted(choices, key=str))
    elif call.func.id == "_positive":
      for field in literal:
        valid[field] = "positive integer"
  return valid


def render() -> str:
  """docs/config.md's text."""
  valid = checks()
  out = [
      "# Config reference",
      "",
      "Every field of the training and fine-tuning configs: its default, what values it takes and",
      "what it does. Set any of them on the command line as `--config.FIELD=VALUE`. Written by",
      "`python scripts/config_reference.py` from `configs/` and `efficiency/config.py`; a test",
      "fails when this file is stale. Choices not listed are checked where the feature is built.",
  ]
  defaults: dict[str, object] = {}
  meanings: dict[str, str] = {}
  missing = []
  for file, get_config, heading in CONFIGS:
    fields = flatten(get_config())
    meanings.update({f: m for f, m in comments(ROOT / file).items() if m})
    out += ["", f"## {heading}", "", "| field | default | valid | meaning |", "|---|---|---|---|"]
    for field, value in fields.items():
      if field in defaults and defaults[field] == value:
        continue  # the default config's field, unchanged
      text = meanings.get(field, "")
      if not text:
        missing.append(f"{file}: {field}")
      text = text.replace("|", "\\|")
      out.append(f"| `{field}` | `{value!r}` | {valid.get(field, '')} | {text} |")
    defaults.update({f: v for f, v in fields.items() if f not in defaults})
  if missing:
    raise SystemExit("fields without a comment saying what they do:\n  " + "\n  ".join(missing))
  return "\n".join(out) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is stale")
  args = parser.parse_args()
  text = render()
  if args.check:
    if not OUTPUT.exists() or OUTPUT.read_text() != text:
      raise SystemExit(f"{OUTPUT.relative_to(ROOT)} is stale: run scripts/config_reference.py")
    return
  OUTPUT.write_text(text)
  print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
