# Helpers every rule package uses. A rule package (`latch.rules.<concern>`)
# contributes findings; `latch.rego` turns all findings into the decision.
#
# A finding is {"code", "risk", "reason"}: `deny` findings refuse the call,
# `gate` findings hold it for the approvers of the highest risk, `notes` are
# informational reasons on an allow.
package latch.lib

import rego.v1

# The catalog entry of the tool being called (undefined for unknown tools).
tool := data.latch_settings.tools[input.action.tool]

# The agent may use the tool: it names no `visible_to` roles, or the agent
# holds one of them.
offered if not tool.visible_to

offered if {
	some role in tool.visible_to
	role in input.agent.roles
}

# An action class humans approved again and again without objection,
# proposed by `latch insights --write` and committed (after review) as
# data/learned.json.
learned := data.latch_learned.auto_approve[input.action.class]

risk_rank := {"low": 0, "medium": 1, "high": 2, "critical": 3}

risk_names := ["low", "medium", "high", "critical"]

finding(code, risk, reason) := {"code": code, "risk": risk, "reason": reason}

# The highest risk among `findings`.
max_risk(findings) := risk_names[max({risk_rank[f.risk] | some f in findings})]

# The code of the highest-risk finding: agents replan on `code`, so it names
# the most serious problem (ties are broken alphabetically, so it is stable).
top_code(findings) := code if {
	top := max_risk(findings)
	code := sort({f.code | some f in findings; f.risk == top})[0]
}

reasons(findings) := sort({f.reason | some f in findings})
