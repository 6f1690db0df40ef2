"""The programs `python -m internlm task=<name>` runs; each is a registered component."""
