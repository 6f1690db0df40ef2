"""Adapters applied to a built model from outside (step 4 of the assembly pipeline): none, lora."""
