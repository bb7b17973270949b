"""Training state, optimizer, step, checkpoints and the loop."""
