//! Stage 4, evaluate: the policy's decision, shadow mode, and the history
//! the next call's novelty is judged against.

use std::sync::Arc;

use super::call::Call;
use super::record::Draft;
use super::{Ctx, Proxy};
use crate::config::Mode;
use crate::gate::LiveGrant;
use crate::policy::pool::{Recorder, ToRecord};
use crate::policy::{Action, Decision, PolicySet};

/// What the policy decided and what Latch will do about it.
pub(super) struct Verdict {
    /// The policy set that decided.
    pub policy: Arc<PolicySet>,
    /// The decision to carry out.
    pub decision: Decision,
    /// Shadow mode: what the policy would have done (the call goes through).
    pub shadowed: Option<Action>,
    /// The grant that allows this gated call without a human.
    pub grant: Option<Arc<LiveGrant>>,
    /// Whether the evaluator thread committed the decision's record
    /// (`Some(false)`: it could not; `None`: the caller records it).
    pub recorded: Option<bool>,
}

/// Evaluate `call` on the evaluator threads. With `draft`, an allow or a
/// deny the route enforces is recorded there too, as soon as it is made
/// (the call does not cross to the audit writer and back); the verdict
/// says whether that happened.
pub(super) async fn evaluate(
    p: &Proxy,
    call: &Call<'_>,
    buffered: bool,
    ctx: &mut Ctx,
    draft: Option<Draft>,
) -> Verdict {
    // The evaluator gets a shared reference; the call keeps its own, so the
    // input is freed later on this worker, which allocated it, not on the
    // evaluator thread (frees into another thread's arena contend on its lock).
    let input = call.input.clone();
    let route = &call.route.config;
    let recorder = draft.filter(|_| route.mode != Mode::Shadow).map(|draft| {
        let (tracer, parent) = (p.tracer.clone(), ctx.span.parent());
        Recorder {
            audit: p.audit.clone(),
            record: Box::new(move |set: &PolicySet, d: &Decision| {
                (d.action != Action::Gate).then(|| ToRecord {
                    event: draft.event(d, set.hash(), false, None),
                    span: tracer.child_of("latch.audit", &parent),
                })
            }),
        }
    });
    // On its own threads, within its time limit (a failure is logged there).
    let (policy, judged) = p.policy.judge(input, recorder).await;
    let recorded = judged.recorded;
    let mut decision = judged.evaluation.decision;
    ctx.outcome = decision.action.as_str();
    ctx.policy_code = Some(decision.code.clone());
    // Shadow mode: record what the policy would have done, then let the call
    // through, so a team can watch a new policy before it bites.
    let shadowed =
        (route.mode == Mode::Shadow && decision.action != Action::Allow).then_some(decision.action);
    if let Some(would) = shadowed {
        ctx.outcome = "shadow";
        p.metrics
            .shadow
            .with_label_values(&[route.name.as_str(), would.as_str()])
            .inc();
    }
    // A live grant allows what the policy would gate at no higher risk; a
    // deny stays a deny, and a policy may mark a gate not grantable.
    let grant = match (shadowed, decision.action, &decision.approval) {
        (None, Action::Gate, Some(spec)) if spec.grantable && buffered => call
            .grants
            .iter()
            .find(|g| g.grant.risk >= decision.risk)
            .cloned(),
        _ => None,
    };
    if let Some(g) = &grant {
        decision = granted(decision, &g.grant);
        ctx.outcome = "granted";
        ctx.policy_code = Some(decision.code.clone());
        p.gate.grant_used(&g.grant);
    }
    let carried_out = match shadowed {
        Some(_) => "allow",
        None => decision.action.as_str(),
    };
    p.history
        .record(&call.class, carried_out, call.now.timestamp());
    if shadowed.is_none() && decision.action == Action::Gate && !buffered {
        // Approval binds to exact bytes; a streamed body has none to bind.
        decision = Decision {
            action: Action::Deny,
            code: "gate_requires_buffered_body".into(),
            reasons: vec![
                "this call needs approval, but its route streams bodies, so there are no exact bytes to approve"
                    .into(),
            ],
            ..decision
        };
        ctx.outcome = "deny";
    }
    Verdict {
        policy,
        decision,
        shadowed,
        grant,
        recorded,
    }
}

/// The policy's gate, allowed by grant `g`.
fn granted(gated: Decision, g: &crate::gate::model::Grant) -> Decision {
    let until = chrono::DateTime::from_timestamp_millis(g.expires_at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut reasons = gated.reasons;
    reasons.push(format!(
        "allowed without a new approval by grant {} from {} (until {until})",
        g.id,
        g.granted_by.join(", ")
    ));
    Decision {
        action: Action::Allow,
        code: "granted".into(),
        reasons,
        approval: None,
        ..gated
    }
}
