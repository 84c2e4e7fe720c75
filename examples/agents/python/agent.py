"""An agent's side of Latch, with httpx: call tools through the gate and turn
every answer into something a model can act on.

- allowed  -> the tool's answer;
- denied   -> the reasons, to feed back to the model so it can replan;
- held     -> wait for a human (202 + poll with the same Idempotency-Key, so a
              retry never runs the call twice), then the tool's answer, or the
              reviewer's reason if they rejected it.

Run it against the demo (`cargo run --release -- serve`):

    python3 examples/agents/python/agent.py

and approve the held e-mail in the dashboard (http://127.0.0.1:8081/, token
alice-demo-token). Settings: LATCH_URL, LATCH_AGENT_TOKEN, LATCH_WAIT_S
(how long to wait for a human), LATCH_POLL_S (poll interval cap).
"""

import json
import os
import sys
import time
import uuid

import httpx

LATCH_URL = os.environ.get("LATCH_URL", "http://127.0.0.1:8080")
TOKEN = os.environ.get("LATCH_AGENT_TOKEN", "support-bot-demo-token")
WAIT_S = float(os.environ.get("LATCH_WAIT_S", "600"))
POLL_S = float(os.environ.get("LATCH_POLL_S", "5"))

FINAL = {"executed", "rejected", "expired", "cancelled", "failed"}


def say(**event):
    """One JSON line per step, for people and for the CI test."""
    print(json.dumps(event), flush=True)


def outcome(resp):
    """What the model should see for one of Latch's answers."""
    if resp.status_code < 300:
        return {"ok": True, "result": resp.json()}
    body = resp.json()
    if resp.status_code == 403 and body.get("error") == "denied":
        reasons = "; ".join(body.get("reasons", []))
        return {
            "ok": False,
            "code": body.get("code"),
            "reasons": body.get("reasons", []),
            # The text to hand back to the model as the tool's output.
            "feedback": f"The approval gate denied this call ({body.get('code')}): {reasons}. "
            "Do not retry it unchanged; choose another way.",
        }
    if resp.status_code == 403:
        return {
            "ok": False,
            "code": body.get("code"),
            "feedback": f"A reviewer {body.get('error')} this call: {body.get('reason')}",
        }
    resp.raise_for_status()
    return {"ok": False, "feedback": body.get("message", "unexpected answer")}


def call_tool(client, method, path, args, reason):
    """Send a tool call through Latch; wait for a human if it is held."""
    headers = {
        "Latch-Reason": reason,
        # The same key on a retry attaches to the same approval: never twice.
        "Idempotency-Key": str(uuid.uuid4()),
        # Answer 202 at once rather than holding the connection.
        "Prefer": "respond-async",
    }
    resp = client.request(method, path, json=args, headers=headers)
    if resp.status_code != 202:
        return outcome(resp)
    pending = resp.json()
    say(step="held", path=path, approval_id=pending["approval_id"])
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        wait = min(float(resp.headers.get("retry-after", "5")), POLL_S)
        time.sleep(wait)
        status = client.get(pending["poll"])
        state = status.json()["status"]
        if state not in FINAL:
            continue
        if state == "executed":
            return outcome(client.get(status.json()["result"]))
        return {
            "ok": False,
            "code": status.json().get("code"),
            "feedback": f"The call was {state}: {status.json().get('reason')}",
        }
    return {"ok": False, "feedback": "no human decided in time; ask again later"}


def main():
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=LATCH_URL, headers=auth, timeout=30) as client:
        say(step="search", **call_tool(client, "GET", "/tools/search?q=refund", None, "look up the refund policy"))
        trade = {"symbol": "ACME", "amount": 2000000, "currency": "USD"}
        say(step="trade", **call_tool(client, "POST", "/tools/trade/orders", trade, "rebalance"))
        email = {"to": "bob@example.com", "subject": "refund", "body": "Your refund is on its way."}
        say(step="email", **call_tool(client, "POST", "/tools/email/send", email, "customer asked for a refund confirmation"))


if __name__ == "__main__":
    sys.exit(main())
