"""Config validation: each bad value gives one clear line naming the field, value and choices."""

import subprocess
import sys

import ml_collections
import pytest

from configs.default import get_config
from efficiency.config import override, resolve
from efficiency.errors import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize(
    "overrides, devices, expected",
    [
        ({"model.attention": "flash"}, 1, "model.attention='flash' is invalid; valid choices: ["),
        ({"model.num_heads": 4, "model.num_kv_heads": 3}, 1,
         "model.num_kv_heads=3 does not divide model.num_heads=4; valid choices: [1, 2, 4]"),
        ({"mesh.data": 3}, 8, "has 3 devices but 8 are available"),
        ({"mesh.data": 2, "mesh.fsdp": 2, "batch_size": 6}, 4,
         "batch_size=6 is not divisible by data-parallel size 4"),
        ({"model.position": "xpos"}, 1, "model.position='xpos' is invalid; valid choices:"),
        ({"quant.mode": "int3"}, 1, "quant.mode='int3' is invalid; valid choices: ["),
        ({"steps": 0}, 1, "steps=0 is invalid; it must be a positive integer"),
        ({"model.dtype": "float16x"}, 1, "model.dtype='float16x' is invalid"),
    ],
)
def test_bad_values_raise_config_error(overrides, devices, expected):
  config = get_config()
  for field, value in overrides.items():
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError) as err:
    resolve(config, num_devices=devices)
  assert expected in str(err.value)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "warmup, overrides, expected",
    [
        ({"buckets": "yes"}, {},
         "data.seq_len_warmup.buckets='yes' is invalid; valid choices: True, False"),
        ({"buckets": 2}, {},
         "data.seq_len_warmup.buckets=2 is invalid; valid choices: True, False"),
        ({}, {"seq_len": 100}, "data.seq_len_warmup.start=16 is below the shortest piece length 25 "
                               "(seq_len=100 halved while even); use a start of at least 25"),
        ({}, {"model.attention": "nsa"}, "model.attention='nsa' works on whole rows, so set "
                                         "data.seq_len_warmup.buckets=False"),
        ({}, {"model.moe.num_experts": 4}, "model.moe.num_experts>0 works on whole rows"),
        ({"fixed": "rows"}, {}, "data.seq_len_warmup.fixed='rows' is invalid; valid choices: "
                                "['sequences', 'tokens']"),
        ({"fixed": "sequences", "buckets": False}, {},
         "data.seq_len_warmup.fixed='sequences' trains on short rows; set "
         "data.seq_len_warmup.buckets=True"),
    ],
)
def test_bad_warmup_buckets_raise_one_line(warmup, overrides, expected):
  config = get_config()
  config.data.seq_len_warmup = ml_collections.ConfigDict(
      {"start": 16, "steps": 10, "buckets": True, **warmup}
  )
  for field, value in overrides.items():
    override(config, field, value)
  with pytest.raises(ConfigError) as err:
    resolve(config, num_devices=1)
  assert expected in str(err.value) and "\n" not in str(err.value)


def test_warmup_buckets_flag_takes_true_or_false():
  config = get_config()
  with pytest.raises(ConfigError, match=r"buckets='3' is invalid; valid choices: true, false"):
    override(config, "data.seq_len_warmup.buckets", "3")
  override(config, "data.seq_len_warmup.buckets", "False")
  assert config.data.seq_len_warmup.buckets is False
  config.data.seq_len_warmup.start = 16
  resolve(config, num_devices=1)  # masked warmup also allows whole-row models
  override(config, "model.attention", "nsa")
  resolve(config, num_devices=1)
  config.data.seq_len_warmup.update(buckets=True, fixed="sequences")
  resolve(config, num_devices=1)  # whole short rows: whole-row models too


def test_mha_and_mqa_fix_kv_heads():
  default = get_config().model
  expected = [("mha", default.num_heads), ("mqa", 1), ("gqa", default.num_kv_heads)]
  for attention, kv_heads in expected:
    config = get_config()
    config.model.attention = attention
    assert resolve(config, num_devices=1).model.num_kv_heads == kv_heads


def test_mesh_fill_resolves_against_device_count():
  config = get_config()
  config.mesh.update(data=-1, fsdp=2, tensor=2)
  config.batch_size = 4
  resolve(config, num_devices=8)  # data fills to 2, dp = 4 divides 4


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--config.model.attention=bogus", "error: model.attention='bogus' is invalid; valid "
                                           "choices: ['"),
        ("--config.model.num_kv_heads=3", "error: model.num_kv_heads=3 does not divide"),
        ("--config.mesh.data=2", "error: mesh={'data': 2, 'fsdp': 1, 'tensor': 1"),
        ("--config.model.num_layer=3", "error: --config.model.num_layer: model has no field "
                                       "'num_layer'; valid fields: ["),
        ("--config.steps=abc", "error: flag --config.steps=abc: invalid literal for int()"),
        ("--config=configs/efficientllm.py:7b", "error: flag --config=configs/efficientllm.py:7b: "
                                               "efficientllm size '7b' is unknown; valid choices"),
        ("--config=configs/missing.py", "error: --config=configs/missing.py: no such config file"),
    ],
)
def test_cli_prints_one_line_error_before_compiling(tmp_path, flag, expected):
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", flag],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  last_line = proc.stderr.strip().splitlines()[-1]
  assert last_line.startswith(expected)
  assert not (tmp_path / "run").exists()  # nothing ran: no workdir written


def test_cli_batch_not_divisible_by_data_parallel(tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path}", "--config.batch_size=7"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": "/usr/bin:/bin",
           "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: batch_size=7 is not divisible by data-parallel size 2"
  )


def test_wandb_without_the_package_is_one_line(monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  config = get_config()
  config.log.wandb = True
  with pytest.raises(ConfigError, match=r"log.wandb=True needs the wandb package.*log.wandb=False"):
    resolve(config, 1)
  config.log.wandb = False
  resolve(config, 1)  # off: the package is not needed


@pytest.mark.parametrize("start, steps, expected", [
    (-1, 0, r"profile.start_step=-1 is invalid"),
    (0, 3, r"profile.start_step=0 is invalid; steps count from 1"),
    (599, 3, r"ends at step 601, past steps=600; start at most at 598"),
    (5, -2, r"profile.steps=-2 is invalid"),
])
def test_profile_window_outside_the_run_is_one_line(start, steps, expected):
  config = get_config()
  config.profile.start_step, config.profile.steps = start, steps
  with pytest.raises(ConfigError, match=expected):
    resolve(config, 1)
