//! A JSON-RPC batch on an MCP route: every `tools/call` in it is judged
//! first; the batch goes out whole only if all of them are allowed, and
//! otherwise nothing is sent and each request is answered with why.

use http::StatusCode;
use serde_json::Value;

use super::super::error::ProxyError;
use super::super::evaluate::{self, Verdict};
use super::super::record::Recorded;
use super::super::{call, read, Ctx, Step};
use super::relay::Watch;
use super::{answer_error, build, json_answer, record_passed, refusal_json, send, Incoming};
use crate::mcp::{self as wire, Message, WireError};
use crate::policy::{Action, Decision};

/// A batch: every `tools/call` in it is judged; it goes out whole only if
/// all of them are allowed, otherwise nothing is sent and each request is
/// answered with why.
pub(super) async fn batch(
    req: &Incoming<'_>,
    parts: http::request::Parts,
    read: read::Read,
    items: &[Value],
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    let p = req.p;
    if items.is_empty() {
        ctx.outcome = "bad_mcp";
        let e = WireError {
            code: wire::INVALID_REQUEST,
            message: "an empty batch".into(),
            id: None,
        };
        return Ok(answer_error(StatusCode::BAD_REQUEST, "bad_mcp", &e));
    }
    let mut msgs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match wire::message(item) {
            Ok(m) => msgs.push(m),
            Err(mut e) => {
                ctx.outcome = "bad_mcp";
                e.message = format!("batch entry {i}: {}", e.message);
                return Ok(answer_error(StatusCode::BAD_REQUEST, "bad_mcp", &e));
            }
        }
    }
    // Judge every tool call first; nothing is recorded or sent until all are.
    let mut judged: Vec<Judged<'_>> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let Message::Request {
            id,
            method: "tools/call",
            params,
        } = m
        else {
            continue;
        };
        let decision_id = format!("{}-{i}", ctx.id);
        let tc = match wire::tool_call(id, *params) {
            Ok(tc) => tc,
            Err(e) => {
                judged.push(Judged {
                    index: i,
                    decision_id,
                    verdict: Err(e),
                    call: None,
                });
                continue;
            }
        };
        let call = build(req, &parts, &read, &tc, *params).await?;
        // Recorded below as carried out: the batch goes out whole or not at all.
        let verdict = evaluate::evaluate(p, &call, true, ctx, None).await;
        judged.push(Judged {
            index: i,
            decision_id,
            verdict: Ok(verdict),
            call: Some(call),
        });
    }
    let all_allowed = judged.iter().all(|j| {
        matches!(&j.verdict, Ok(v) if v.decision.action == Action::Allow || v.shadowed.is_some())
    });
    // Record each decision as carried out.
    let mut answers: Vec<(usize, Value)> = Vec::new();
    for Judged {
        index: i,
        decision_id,
        verdict,
        call,
    } in &judged
    {
        let (Ok(v), Some(call)) = (verdict, call) else {
            if let Err(e) = verdict {
                answers.push((*i, e.to_json()));
            }
            continue;
        };
        let recorded = Recorded {
            proxy: p,
            request_id: decision_id,
            agent: req.agent,
            call,
            policy: v.policy.hash(),
            span: &ctx.span,
        };
        let id = msgs[*i].request_id().cloned().unwrap_or(Value::Null);
        let carried = match (all_allowed, v.decision.action, v.shadowed) {
            (true, _, shadow) => {
                recorded.record(&v.decision, shadow.is_some(), v.grant.as_ref().map(|g| &g.grant)).await?;
                continue;
            }
            (false, Action::Deny, None) => v.decision.clone(),
            (false, Action::Gate, None) => refused_in_batch(
                &v.decision,
                "gate_in_batch",
                "this call needs approval, which a batch cannot wait for: send it on its own",
            ),
            (false, _, _) => refused_in_batch(
                &v.decision,
                "batch_refused",
                "not sent: another call in this batch was refused, and a batch goes out whole or not at all",
            ),
        };
        recorded.record(&carried, false, None).await?;
        let refused = refusal_json(&id, decision_id, &carried, "deny");
        answers.push((*i, refused));
    }
    if all_allowed {
        let others: Vec<Message<'_>> = msgs
            .iter()
            .filter(|m| m.method() != Some("tools/call"))
            .copied()
            .collect();
        if !others.is_empty() {
            record_passed(req, &parts, &read, &others, ctx).await?;
        }
        ctx.outcome = "allow";
        return send(req, parts, read, &Watch::of(&msgs), ctx).await;
    }
    ctx.outcome = "deny";
    // Requests that are not tool calls were not sent either: say so.
    for (i, m) in msgs.iter().enumerate() {
        if let Message::Request { id, method, .. } = m {
            if *method != "tools/call" {
                let why = "not sent: a tool call in this batch was refused, and a batch goes out whole or not at all";
                answers.push((i, wire::error(Some(id), wire::INVALID_REQUEST, why, None)));
            }
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    let body = Value::Array(answers.into_iter().map(|(_, v)| v).collect());
    Ok(Step::Answer(json_answer(
        StatusCode::OK,
        &body,
        Some("deny"),
        None,
    )))
}

/// One `tools/call` of a batch, judged.
struct Judged<'r> {
    /// Its place in the batch.
    index: usize,
    /// Its decision record's id.
    decision_id: String,
    /// The verdict, or why the call is malformed.
    verdict: Result<Verdict, WireError>,
    /// The call as judged.
    call: Option<call::Call<'r>>,
}

/// The policy's decision, turned into a refusal of a call in a batch.
fn refused_in_batch(d: &Decision, code: &str, why: &str) -> Decision {
    let mut reasons = vec![why.to_string()];
    reasons.extend(d.reasons.iter().cloned());
    Decision {
        action: Action::Deny,
        code: code.into(),
        reasons,
        approval: None,
        ..d.clone()
    }
}
