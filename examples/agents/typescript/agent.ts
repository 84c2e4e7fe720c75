// An agent's side of Latch, with fetch: call tools through the gate and turn
// every answer into something a model can act on.
//
// - allowed -> the tool's answer;
// - denied  -> the reasons, to feed back to the model so it can replan;
// - held    -> wait for a human (202 + poll with the same Idempotency-Key, so
//              a retry never runs the call twice), then the tool's answer, or
//              the reviewer's reason if they rejected it.
//
// Against the demo (`cargo run --release -- serve`):
//
//   tsc --target es2022 --module nodenext --outDir /tmp/agent examples/agents/typescript/agent.ts
//   node /tmp/agent/agent.js
//
// and approve the held e-mail in the dashboard (http://127.0.0.1:8081/, token
// alice-demo-token). Settings: LATCH_URL, LATCH_AGENT_TOKEN, LATCH_WAIT_S,
// LATCH_POLL_S.

declare const process: { env: Record<string, string | undefined>; exitCode?: number };

const LATCH_URL = process.env.LATCH_URL ?? "http://127.0.0.1:8080";
const TOKEN = process.env.LATCH_AGENT_TOKEN ?? "support-bot-demo-token";
const WAIT_S = Number(process.env.LATCH_WAIT_S ?? "600");
const POLL_S = Number(process.env.LATCH_POLL_S ?? "5");

const FINAL = new Set(["executed", "rejected", "expired", "cancelled", "failed"]);

/** What the model sees as the tool's output. */
export type ToolOutcome =
  | { ok: true; result: unknown }
  | { ok: false; code?: string; reasons?: string[]; feedback: string };

function say(event: Record<string, unknown>): void {
  console.log(JSON.stringify(event));
}

const sleep = (s: number) => new Promise((resolve) => setTimeout(resolve, s * 1000));

async function outcome(resp: Response): Promise<ToolOutcome> {
  const body = (await resp.json()) as Record<string, any>;
  if (resp.ok) return { ok: true, result: body };
  if (resp.status === 403 && body.error === "denied") {
    const reasons: string[] = body.reasons ?? [];
    return {
      ok: false,
      code: body.code,
      reasons,
      feedback:
        `The approval gate denied this call (${body.code}): ${reasons.join("; ")}. ` +
        "Do not retry it unchanged; choose another way.",
    };
  }
  if (resp.status === 403) {
    return { ok: false, code: body.code, feedback: `A reviewer ${body.error} this call: ${body.reason}` };
  }
  throw new Error(`Latch answered ${resp.status}: ${body.message ?? JSON.stringify(body)}`);
}

/** Send a tool call through Latch; wait for a human if it is held. */
export async function callTool(method: string, path: string, args: unknown, reason: string): Promise<ToolOutcome> {
  const headers: Record<string, string> = {
    authorization: `Bearer ${TOKEN}`,
    "latch-reason": reason,
    // The same key on a retry attaches to the same approval: never twice.
    "idempotency-key": crypto.randomUUID(),
    // Answer 202 at once rather than holding the connection.
    prefer: "respond-async",
  };
  if (args !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(LATCH_URL + path, {
    method,
    headers,
    body: args === undefined ? undefined : JSON.stringify(args),
  });
  if (resp.status !== 202) return outcome(resp);
  const pending = (await resp.json()) as { approval_id: string; poll: string };
  say({ step: "held", path, approval_id: pending.approval_id });
  const auth = { authorization: `Bearer ${TOKEN}` };
  const deadline = Date.now() + WAIT_S * 1000;
  while (Date.now() < deadline) {
    await sleep(Math.min(Number(resp.headers.get("retry-after") ?? "5"), POLL_S));
    const status = (await (await fetch(LATCH_URL + pending.poll, { headers: auth })).json()) as Record<string, any>;
    if (!FINAL.has(status.status)) continue;
    if (status.status === "executed") return outcome(await fetch(LATCH_URL + status.result, { headers: auth }));
    return { ok: false, code: status.code, feedback: `The call was ${status.status}: ${status.reason}` };
  }
  return { ok: false, feedback: "no human decided in time; ask again later" };
}

async function main(): Promise<void> {
  say({ step: "search", ...(await callTool("GET", "/tools/search?q=refund", undefined, "look up the refund policy")) });
  const trade = { symbol: "ACME", amount: 2000000, currency: "USD" };
  say({ step: "trade", ...(await callTool("POST", "/tools/trade/orders", trade, "rebalance")) });
  const email = { to: "bob@example.com", subject: "refund", body: "Your refund is on its way." };
  say({ step: "email", ...(await callTool("POST", "/tools/email/send", email, "customer asked for a refund confirmation")) });
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
