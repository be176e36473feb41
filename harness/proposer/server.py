"""The proposer as an OpenAI-compatible chat-completions server.

Stock OpenEvolve talks to it exactly as it talks to a hosted LLM (``--api-base
http://127.0.0.1:PORT/v1 --primary-model harness-proposer``). Each request is answered with one
proposal from ``mutations``; every ``--adversarial-every`` N-th request instead gets an adversarial
proposal that the evaluator must reject with a known reason code, so that a run shows its rejections
working end to end.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness.proposer.catalogue import ADVERSARIAL_KINDS
from harness.proposer.mutations import (NoMutation, Program, Proposal, adversarial, extract_program, mutate_note,
                                        parent_reason, propose)

MODEL_NAME = "harness-proposer"


def _message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Proposer:
    """Numbering, seeding, adversarial schedule and the JSONL log. Thread-safe."""

    def __init__(self, seed: int = 0, adversarial_every: int = 0, log_path: Path | str | None = None):
        self.seed, self.adversarial_every = seed, adversarial_every
        self.log_path = Path(log_path) if log_path else None
        self.lock = threading.Lock()
        self.requests = self.adversarial_count = 0
        if self.log_path and self.log_path.exists():  # a resumed run continues the numbering and the cycle
            for line in self.log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.requests = max(self.requests, int(entry.get("request", 0)))
                self.adversarial_count += bool(entry.get("adversarial"))

    def rng(self, request_no: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + request_no)

    def next_request(self) -> tuple[int, str | None]:
        with self.lock:
            self.requests += 1
            n, kind = self.requests, None
            if self.adversarial_every > 0 and n % self.adversarial_every == 0:
                kind = ADVERSARIAL_KINDS[self.adversarial_count % len(ADVERSARIAL_KINDS)]
                self.adversarial_count += 1
            return n, kind

    def answer(self, messages: list[dict]) -> tuple[Proposal, int]:
        n, kind = self.next_request()
        user = "\n".join(_message_text(m.get("content")) for m in messages if m.get("role") == "user")
        program = extract_program(user) or extract_program("\n".join(_message_text(m.get("content")) for m in messages))
        if program is None:
            proposal = Proposal(None, "none", {}, "No program found in the request; no change proposed.")
        else:
            proposal = None
            if kind:
                try:
                    proposal = adversarial(program, kind, variant=self.adversarial_count // len(ADVERSARIAL_KINDS))
                except NoMutation:
                    proposal = None
            if proposal is None:
                try:
                    proposal = propose(program, self.rng(n), n, parent_reason(user))
                except Exception as exc:  # noqa: BLE001 - a proposer bug must not cost the run an iteration
                    try:
                        proposal = mutate_note(Program(program), self.rng(n), n)
                    except Exception:  # noqa: BLE001
                        proposal = Proposal(None, "none", {}, "The proposer failed on this program; no change.")
                    proposal.params["error"] = f"{type(exc).__name__}: {exc}"
        self.log(n, proposal, program)
        return proposal, n

    def log(self, n: int, proposal: Proposal, program: str | None) -> None:
        if not self.log_path:
            return
        entry = {
            "request": n, "time": time.time(), "framework": proposal.framework, "mutation": proposal.mutation,
            "params": proposal.params, "adversarial": proposal.adversarial, "kind": proposal.kind,
            "expected_reason": proposal.expected_reason, "explanation": proposal.explanation,
            "parent_sha256": hashlib.sha256(program.encode()).hexdigest() if program else None,
            "child_sha256": hashlib.sha256(proposal.child.encode()).hexdigest() if proposal.child else None,
        }
        with self.lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")


def completion(proposal: Proposal, n: int, model: str, prompt_chars: int) -> dict:
    content = proposal.text
    prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-harness-{n}-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "harness-proposer",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "harness-proposer/0.1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if getattr(self.server, "verbose", False):
            sys.stderr.write("[proposer] " + (format % args) + "\n")

    def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def do_GET(self):  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0,
                                                         "owned_by": "harness"}]})
        elif path in ("", "/health", "/v1"):
            self._send(200, {"status": "ok", "model": MODEL_NAME})
        else:
            self._error(404, f"unknown path {self.path}")

    def do_POST(self):  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"unknown path {self.path}")
            return
        try:
            body = json.loads(raw or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        try:
            proposal, n = self.server.proposer.answer(messages)
        except Exception as exc:  # noqa: BLE001 - answer with an error, keep serving
            self._error(500, f"proposer failed: {type(exc).__name__}: {exc}", "server_error")
            return
        prompt_chars = sum(len(_message_text(m.get("content"))) for m in messages)
        reply = completion(proposal, n, body.get("model") or MODEL_NAME, prompt_chars)
        if body.get("stream"):
            chunk = {**reply, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": proposal.text},
                                  "finish_reason": "stop"}]}
            self._send(200, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", "text/event-stream")
        else:
            self._send(200, reply)


class ProposerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, proposer: Proposer | None = None, verbose=False):
        super().__init__((host, port), _Handler)
        self.proposer = proposer or Proposer()
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="harness-proposer", daemon=True)
        thread.start()
        return thread
