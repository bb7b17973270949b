"""Which config fields a resume may change (efficiency.workdir.resume.differing_fields)."""

from configs.default import get_config
from efficiency.workdir.resume import differing_fields


def test_scan_unroll_and_cadence_may_change_but_the_model_may_not():
  saved = get_config().to_dict()
  config = get_config()
  config.model.scan_unroll = 2
  config.eval_every = 7
  assert differing_fields(config, saved) == []
  config.model.num_layers += 1
  config.model.scan_layers = False
  assert differing_fields(config, saved) == ["model.num_layers", "model.scan_layers"]


def test_fields_only_one_side_has_are_not_compared():
  """A workdir saved before a field existed resumes: its config.json lacks the field."""
  saved = get_config().to_dict()
  del saved["model"]["scan_unroll"]
  config = get_config()
  config.model.scan_unroll = 4
  assert differing_fields(config, saved) == []
