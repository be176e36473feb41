"""Developer commands that time or probe the machine: ``harness bench``, ``harness gpu-check`` and the
confinement probe. They train programs in their own process, outside the evaluator's sandbox."""
