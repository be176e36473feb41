"""The trusted side: runs in OpenEvolve's processes and in the commands around the loop.

It never imports torch, the sandbox side or candidate code, and never executes a program: it reads programs as
text (the static gate), runs them only through the executor (``python -m harness.sandbox`` under limits),
and computes every score itself from the plain numbers the sandbox reports (``scoring``).
"""
