"""Runs a few PEFT train steps of a tiny model on a given mesh and prints the losses as JSON.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set beforehand:
  python -m tests.efficiency.peft.sharded_steps METHOD BASE_QUANT DATA FSDP TENSOR [ADAPTER_LAYERS]
"""

import json
import sys

import jax

from tests.helpers import run_peft, tiny_peft_config


def main(method: str, base_quant: str, data: str, fsdp: str, tensor: str,
         adapter_layers: str = "0") -> None:
  config = tiny_peft_config(method, devices=jax.device_count(), base_quant=base_quant,
                            adapter_layers=int(adapter_layers))
  config.mesh.update(data=int(data), fsdp=int(fsdp), tensor=int(tensor))
  _, state, losses, _ = run_peft(config, steps=4)
  gate = state.params["layers"]["mlp"]["gate"]
  report = {"losses": losses, "devices": jax.device_count()}
  if "lora_a" in gate:
    report.update(
        lora_a=list(gate["lora_a"].sharding.spec), lora_b=list(gate["lora_b"].sharding.spec),
        lora_b_shards=len(gate["lora_b"].addressable_shards),
    )
  print(json.dumps(report))


if __name__ == "__main__":
  main(*sys.argv[1:])
