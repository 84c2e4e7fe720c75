"""An MCP client going through Latch, with httpx and nothing else: the
Streamable HTTP transport by hand, so every step is visible.

- tools/list -> only the tools the policy lets this agent use;
- allowed    -> the tool's result;
- denied     -> an `isError` result whose text says why (hand it to the
                model as the tool's output; `_meta["latch/code"]` for code);
- held       -> an event stream: `notifications/progress` while reviewers
                decide ("waiting for 1x lead, 29m left"), then the result.

Run it against the demo (`cargo run --release -- serve`):

    python3 examples/agents/python/mcp_agent.py

and approve the held e-mail in the dashboard (http://127.0.0.1:8081/, token
alice-demo-token). Settings: LATCH_URL, LATCH_AGENT_TOKEN, LATCH_MCP_PATH.
"""

import json
import os
import sys

import httpx

LATCH_URL = os.environ.get("LATCH_URL", "http://127.0.0.1:8080")
TOKEN = os.environ.get("LATCH_AGENT_TOKEN", "support-bot-demo-token")
MCP_PATH = os.environ.get("LATCH_MCP_PATH", "/mcp/demo")
PROTOCOL = "2025-11-25"


def say(**event):
    """One JSON line per step, for people and for the CI test."""
    print(json.dumps(event), flush=True)


class Session:
    """A Streamable HTTP MCP session through Latch."""

    def __init__(self, client):
        self.client = client
        self.next_id = 0
        self.headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

    def _message(self, method, params=None, notification=False):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        if not notification:
            self.next_id += 1
            msg["id"] = self.next_id
        return msg

    def request(self, method, params=None, on_event=None, on_head=None):
        """Send a request; return its response (reading an event stream
        to the end, handing other messages to `on_event`)."""
        msg = self._message(method, params)
        with self.client.stream("POST", MCP_PATH, json=msg, headers=self.headers) as resp:
            if on_head:
                on_head(resp)
            if "mcp-session-id" in resp.headers:
                self.headers["Mcp-Session-Id"] = resp.headers["mcp-session-id"]
            kind = resp.headers.get("content-type", "")
            if kind.startswith("application/json"):
                resp.read()
                return resp.json()
            if not kind.startswith("text/event-stream"):
                resp.read()
                raise RuntimeError(f"not an MCP answer: HTTP {resp.status_code} {kind}")
            # Each event's data is one JSON-RPC message (split over
            # `data:` lines at most); some httpx versions drop the blank
            # line that ends an event, so an event ends when its data parses.
            data = []
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data.append(line[5:].strip())
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    continue
                data = []
                if event.get("id") == msg["id"] and "method" not in event:
                    return event
                if on_event:
                    on_event(event)
        raise RuntimeError(f"the stream ended without an answer to {method}")

    def notify(self, method):
        msg = self._message(method, notification=True)
        self.client.post(MCP_PATH, json=msg, headers=self.headers).raise_for_status()


def tool_outcome(response):
    """What the model should see for a tools/call answer."""
    if "error" in response:
        return {"ok": False, "error": response["error"]}
    result = response["result"]
    text = "\n".join(c.get("text", "") for c in result.get("content", []))
    meta = result.get("_meta") or {}
    if result.get("isError"):
        return {"ok": False, "code": meta.get("latch/code"), "feedback": text}
    return {"ok": True, "text": text}


def main():
    with httpx.Client(base_url=LATCH_URL, timeout=httpx.Timeout(30, read=600)) as client:
        s = Session(client)
        init = s.request("initialize", {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "latch-example-agent", "version": "1"},
        })
        s.headers["MCP-Protocol-Version"] = init["result"]["protocolVersion"]
        s.notify("notifications/initialized")

        tools = s.request("tools/list")["result"]["tools"]
        say(step="tools", names=sorted(t["name"] for t in tools))

        def call(name, arguments, **kw):
            return tool_outcome(s.request("tools/call", {"name": name, "arguments": arguments}, **kw))

        say(step="search", **call("search", {"q": "rego"}))
        say(step="trade", **call("execute_trade", {"symbol": "ACME", "amount": 5000000, "currency": "USD"}))

        def held(resp):
            approval = resp.headers.get("latch-approval")
            if approval:
                say(step="held", approval_id=approval)

        def progress(event):
            if event.get("method") == "notifications/progress":
                say(step="progress", message=event["params"].get("message"))

        email = {"to": "bob@example.com", "subject": "Your refund", "body": "It is on its way."}
        params = {"name": "send_email", "arguments": email, "_meta": {"progressToken": "email-1"}}
        outcome = tool_outcome(s.request("tools/call", params, on_event=progress, on_head=held))
        say(step="email", **outcome)


if __name__ == "__main__":
    try:
        main()
    except (httpx.HTTPError, RuntimeError, KeyError) as e:
        print(f"agent failed: {e}", file=sys.stderr)
        sys.exit(1)
