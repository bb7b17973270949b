"""`benchmarks/seq_len_warmup.py --variant`: parsing, and the config a variant trains with."""

import argparse

import pytest

from benchmarks.seq_len_warmup import arm_config, parse_variant, planned_runs
from data.seq_len_warmup import piece_len


def _args(**kw) -> argparse.Namespace:
  return argparse.Namespace(steps=240, eval_every=20, target=5.0, start=16, warmup_steps=60, **kw)


def test_parse_variant_reads_name_arm_and_fields():
  text = "w120=sequences_equal_tokens:data.seq_len_warmup.steps=120,optimizer.lr=6e-3"
  assert parse_variant(text) == (
      "w120", "sequences_equal_tokens",
      {"data.seq_len_warmup.steps": "120", "optimizer.lr": "6e-3"})
  assert parse_variant("baseline_again=baseline") == ("baseline_again", "baseline", {})


@pytest.mark.parametrize("text", ["x=nope", "baseline=baseline", "=baseline", "y=baseline:lr"])
def test_parse_variant_refuses_bad_text(text):
  with pytest.raises(ValueError, match="--variant"):
    parse_variant(text)


def test_variant_stretches_its_own_warmup_to_the_baseline_tokens():
  """A longer warmup skips more tokens, so an equal-tokens variant runs more extra steps."""
  fields = {"data.seq_len_warmup.steps": "120"}
  config = arm_config("sequences_equal_tokens", 128, _args(), fields)
  assert config.data.seq_len_warmup.steps == 120
  assert config.data.seq_len_warmup.fixed == "sequences"
  skipped = sum(128 - piece_len(s, config) for s in range(120))
  assert config.steps == 240 + -(-skipped // 128) > arm_config("sequences_equal_tokens", 128,
                                                                _args()).steps


@pytest.mark.parametrize("arms, variants, match", [
    ("baseline,nope", [], "--arms: nope unknown"),
    ("baseline", ["a=baseline", "a=masked"], "given twice"),
    ("baseline", ["a=baseline:optimizer.nope=1"], "has no field 'nope'"),
])
def test_planned_runs_refuse_bad_arms_and_variants_before_any_trains(arms, variants, match):
  with pytest.raises(ValueError, match=match):
    planned_runs(_args(seq_lens="128", arms=arms, variant=variants))


def test_planned_runs_put_variants_after_the_arms_and_alternate_the_arms():
  runs = planned_runs(_args(seq_lens="128,512", arms="baseline,masked", variant=["again=baseline"]))
  assert [(t, name) for t, name, _ in runs] == [
      (128, "baseline"), (128, "masked"), (128, "again"),
      (512, "masked"), (512, "baseline"), (512, "again")]
  assert all(config.seq_len == t for t, _, config in runs)
