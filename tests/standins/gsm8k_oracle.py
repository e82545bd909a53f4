"""An OpenAI-compatible chat server that knows GSM8K's answers: it finds the question of the
request's last user turn in a GSM8K jsonl file and answers with that problem's worked
solution (which ends in '#### N'). A model that is always right, so that a passing score can
be shown where no real model could reach one. Serves /v1/chat/completions, /v1/models and
/health; an unknown question gets "I do not know.".

    python3 gsm8k_oracle.py DATASET.jsonl PORT [MODEL]
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

QUESTION = re.compile(r"Question: (.*)\nAnswer:", re.S)


def make_server(dataset: Path, port: int, model: str = "oracle") -> ThreadingHTTPServer:
    answers = {}
    for line in dataset.read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            answers[doc["question"].strip()] = doc["answer"]
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tests read the requests it saw instead
            pass

        def _send(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/v1/models"):
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self):
            if not self.path.startswith("/v1/chat/completions"):
                return self._send(404, {"error": "not found"})
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if req.get("model") != model:
                return self._send(404, {"error": {"message": f"model {req.get('model')} not served"}})
            seen.append(req)
            last = [m for m in req["messages"] if m["role"] == "user"][-1]["content"]
            m = QUESTION.search(last)
            text = answers.get(m.group(1).strip(), "I do not know.") if m else "I do not know."
            self._send(200, {"id": f"c{len(seen)}", "object": "chat.completion", "model": model,
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.seen = seen  # type: ignore[attr-defined]
    return server


def serve_in_thread(dataset: Path, model: str = "oracle") -> ThreadingHTTPServer:
    server = make_server(dataset, 0, model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    make_server(Path(sys.argv[1]), int(sys.argv[2]), *(sys.argv[3:4])).serve_forever()
