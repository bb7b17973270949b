"""Mesh construction and logical-to-mesh sharding rules."""
