"""Real TFDS names (lm1b) through `tfds.testing.mock_data`, and a missing TFDS data dir.

mock_data works without TensorFlow with MockPolicy.USE_CODE: it patches
`DatasetBuilder.as_data_source` to serve random examples, which `tfds.data_source(...,
download=False)` returns.
"""

import pytest
import tensorflow_datasets as tfds

from data import pipeline, prepared, sources, text_corpus
from data import tokenizer as tokenizer_lib
from tests.helpers import data_config


@pytest.fixture
def lm1b_config(tmp_path):
  return data_config("", str(tmp_path), name="lm1b", tokenizer="bytes")


def test_lm1b_through_mock_data(lm1b_config):
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    tokenizer = tokenizer_lib.get_tokenizer(lm1b_config)
    report = prepared.prepare(lm1b_config, tokenizer).report
    assert report["splits"]["train"]["documents"] == 40
    shard = dict(process_index=0, process_count=1)
    batch = next(pipeline.make_train_iterator(lm1b_config, tokenizer, **shard))
    eval_batches = pipeline.make_eval_batches(lm1b_config, tokenizer, **shard)
  assert batch["inputs"].shape == (4, 32) and batch["weights"].sum() == 4 * 32
  assert len(eval_batches) == 2


def test_missing_tfds_data_dir_says_how_to_prepare(lm1b_config, tmp_path):
  lm1b_config.data.tfds_data_dir = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"tfds_data_dir='.*missing' does not exist; "
                     r"prepare it with `tfds build lm1b --data_dir=.*--file_format=array_record`"):
    sources.load_source(lm1b_config)


def test_unprepared_tfds_dataset_says_how_to_prepare(lm1b_config, tmp_path):
  lm1b_config.data.tfds_data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"data.name='lm1b' is not prepared as ArrayRecord"):
    sources.load_source(lm1b_config)


def test_any_prepared_tfds_dataset_by_name(tmp_path):
  """A dataset prepared as ArrayRecord (here by the text builder) is read by its TFDS name."""
  (tmp_path / "texts").mkdir()
  for i in range(10):
    (tmp_path / "texts" / f"{i}.txt").write_text(f"text number {i} " * 20)
  builder_config = text_corpus.make_config(str(tmp_path / "texts"), 20)
  tfds_dir = str(tmp_path / "tfds")
  text_corpus.TextCorpus(
      config=builder_config, data_dir=tfds_dir, file_format="array_record"
  ).download_and_prepare()
  config = data_config("", str(tmp_path / "data"), name=f"text_corpus/{builder_config.name}",
                       tfds_data_dir=tfds_dir, tokenizer="bytes")
  source = sources.load_source(config)
  assert len(source.train) + len(source.validation) == 10
  tokenizer = tokenizer_lib.get_tokenizer(config)
  batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
  assert "text number" in tokenizer.decode(batch["inputs"].ravel())
