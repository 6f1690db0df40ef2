"""What one training step computes: objectives for the shared fit loop (next_token, dpo, ...)."""
