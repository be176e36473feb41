"""The built-in proposer: an offline stand-in for the LLM that mutates attention programs.

No model weights, no network, standard library only: an OpenAI-compatible chat-completions server that
stock OpenEvolve talks to exactly as it talks to a hosted LLM, and a demo runner that drives the stock
``openevolve-run`` CLI against it in a subprocess.
"""
