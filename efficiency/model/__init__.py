"""The decoder-only transformer and its FLOP count."""
