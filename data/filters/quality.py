"""Text-quality heuristics (after Gopher's rules), with thresholds from `data.filter.*`.

- alphanumeric ratio: alphanumeric characters over non-whitespace characters, at least
  `min_alnum_ratio` (drops punctuation soup and encoded blobs);
- symbol ratio: characters that are neither alphanumeric, whitespace nor ASCII punctuation,
  over all characters, at most `max_symbol_ratio` (drops binary-like and decorative junk);
- line length: the longest line has at most `max_line_chars` characters (drops minified or
  generated text);
- repetition: non-blank lines that repeat an earlier line, over non-blank lines, at most
  `max_repeated_line_ratio`.
"""

import re
import string

import numpy as np

from data.filters.documents import Documents

_ALNUM = re.compile(r"[^\W_]")
_NON_SPACE = re.compile(r"\S")
_SYMBOL = re.compile("[^\\w\\s" + re.escape(string.punctuation) + "]")


def measures(text: str) -> dict[str, float]:
  """The four quantities the heuristics bound."""
  non_space = max(len(_NON_SPACE.findall(text)), 1)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return {
      "alnum_ratio": len(_ALNUM.findall(text)) / non_space,
      "symbol_ratio": len(_SYMBOL.findall(text)) / max(len(text), 1),
      "max_line_chars": max((len(line) for line in text.splitlines()), default=0),
      "repeated_line_ratio": (len(lines) - len(set(lines))) / max(len(lines), 1),
  }


def keep(docs: Documents) -> np.ndarray:
  p = docs.config.data.filter
  mask = np.zeros(len(docs.texts), bool)
  for i, text in enumerate(docs.texts):
    m = measures(text)
    mask[i] = (
        m["alnum_ratio"] >= p.min_alnum_ratio
        and m["symbol_ratio"] <= p.max_symbol_ratio
        and m["max_line_chars"] <= p.max_line_chars
        and m["repeated_line_ratio"] <= p.max_repeated_line_ratio
    )
  return mask
