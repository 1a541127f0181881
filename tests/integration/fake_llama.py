"""fake_llama.py - a tiny llama-server stand-in for the tests of `serve --llm`.

Why: some behaviours of a remote engine cannot be had from a real one on
demand: an old llama-server that ignores parse_special, an engine that fails
with its own error text, a reply whose every character is cut across tokens.
This one speaks the subset remote.c uses (GET /props, POST /tokenize,
/detokenize, /apply-template, /completion) over a byte-level vocabulary:
ids 0..255 are bytes, 256 and 257 are "<|im_start|>" and "<|im_end|>".

    fake = FakeLlama(reply="...").start(); ...; fake.stop()

Knobs (attributes, changeable while it runs): ignore_parse_special (turn
special text into control ids whatever the request says), fail_with (answer
/completion with HTTP 500 and this error message), reply (the text
/completion generates, repeated up to n_predict tokens: one token per byte),
props_extra (merged into /props, e.g. to claim what it does not offer)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257}


class FakeLlama:
    def __init__(self, reply="ok", ignore_parse_special=False):
        self.reply, self.ignore_parse_special, self.fail_with = reply, ignore_parse_special, None
        self.props_extra = {}
        self.bodies = []  # every POST body, in order: (path, parsed JSON)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a connection per request: stop() leaves none open

            def log_message(self, *a):
                pass

            def send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path != "/props":
                    return self.send(404, {"error": {"message": "no route"}})
                self.send(200, dict({"default_generation_settings": {"n_ctx": 4096}, "chat_template": "fake-chatml",
                                     "model_path": "/models/fake.gguf", "bos_token": "", "eos_token": "<|im_end|>"},
                                    **fake.props_extra))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.bodies.append((self.path, body))
                route = {"/tokenize": fake.tokenize, "/detokenize": fake.detokenize,
                         "/apply-template": fake.apply_template, "/completion": fake.completion}.get(self.path)
                if not route:
                    return self.send(404, {"error": {"message": "no route"}})
                self.send(*route(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]

    def url(self, userinfo=""):
        return "http://%s127.0.0.1:%d" % (userinfo + "@" if userinfo else "", self.port)

    def start(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def ids(self, text, parse_special):
        out, i = [], 0
        while i < len(text):
            hit = next((s for s in SPECIALS if text.startswith(s, i)), None) if parse_special else None
            if hit:
                out.append(SPECIALS[hit])
                i += len(hit)
            else:
                out.extend(text[i].encode())
                i += 1
        return out

    def tokenize(self, b):
        return 200, {"tokens": self.ids(b["content"], b.get("parse_special", True) or self.ignore_parse_special)}

    def detokenize(self, b):
        # like a server whose JSON is valid UTF-8: a cut character becomes U+FFFD
        return 200, {"content": bytes(t for t in b["tokens"] if t < 256).decode("utf-8", "replace")}

    def apply_template(self, b):
        text = "".join("<|im_start|>%s\n%s<|im_end|>\n" % (m["role"], m["content"]) for m in b["messages"])
        return 200, {"prompt": text + ("<|im_start|>assistant\n" if b.get("add_generation_prompt", True) else "")}

    def completion(self, b):
        if self.fail_with:
            return 500, {"error": {"code": 500, "message": self.fail_with}}
        data = (self.reply.encode() * (b["n_predict"] // max(1, len(self.reply.encode())) + 1))[:b["n_predict"]]
        return 200, {"content": data.decode("utf-8", "replace"), "tokens": list(data), "stop": True,
                     "stop_type": "limit",
                     "timings": {"prompt_n": len(b["prompt"]), "cache_n": 0, "prompt_ms": 1.0, "predicted_ms": 1.0}}
