"""Mesh construction, logical-to-mesh sharding rules, and the target a program is compiled for
(the mesh and platform being traced for; named TPU and GPU topologies and their chips)."""
