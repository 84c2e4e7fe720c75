# Latch's shipped gate policy: irreversibility, value and novelty.
#
# The logic is generic; what it applies to lives in data.json
# (data.latch_settings): the tool catalog, value limits per currency and the
# approvers each risk level needs. Tune the data, not this file.
package latch

import rego.v1

# The catalog entry of the tool being called (undefined for unknown tools).
tool := data.latch_settings.tools[input.action.tool]

# ---- value -------------------------------------------------------------------
# The amount and currency named by the tool's catalog entry.
raw_amount := input.action.args[tool.value.amount_field]

amount := raw_amount if is_number(raw_amount)

amount := to_number(raw_amount) if {
	is_string(raw_amount)
	regex.match(`^[0-9]+(\.[0-9]+)?$`, raw_amount)
}

currency := upper(object.get(input.action.args, tool.value.currency_field, tool.value.default_currency))

limits := data.latch_settings.value_limits[currency]

default value_info := null

value_info := {"amount": amount, "currency": currency}

# ---- learned classes -----------------------------------------------------------
# Action classes humans approved again and again without objection, proposed by
# `latch insights --write` and committed (after review) as data/learned.json.
learned := data.latch_learned.auto_approve[input.action.class]

# ---- irreversibility --------------------------------------------------------------
irreversible if tool.irreversible

irreversible if data.latch_settings.irreversible_methods[input.request.method]

# ---- findings: {"code", "risk", "reason"} ---------------------------------------
deny_findings contains f if {
	not tool
	f := {
		"code": "unknown_tool", "risk": "high",
		"reason": sprintf("tool %q is not in the catalog; an administrator must add it before agents can use it", [input.action.tool]),
	}
}

deny_findings contains f if {
	tool.value
	not amount
	f := {
		"code": "missing_amount", "risk": "high",
		"reason": sprintf("%s needs a numeric %q argument", [input.action.tool, tool.value.amount_field]),
	}
}

deny_findings contains f if {
	tool.value
	amount
	not limits
	f := {
		"code": "unknown_currency", "risk": "high",
		"reason": sprintf("no limits are configured for currency %q", [currency]),
	}
}

deny_findings contains f if {
	amount < 0
	f := {
		"code": "invalid_amount", "risk": "high",
		"reason": sprintf("%v is not a valid amount", [amount]),
	}
}

deny_findings contains f if {
	amount >= limits.deny_at
	f := {
		"code": "value_limit", "risk": "critical",
		"reason": sprintf("%v %s is at or above the hard limit of %v %s; split the work or ask a human to do it", [amount, currency, limits.deny_at, currency]),
	}
}

gate_findings contains f if {
	amount >= limits.director_at
	amount < limits.deny_at
	f := {
		"code": "value", "risk": "critical",
		"reason": sprintf("%v %s is at or above %v %s and needs a lead and a director", [amount, currency, limits.director_at, currency]),
	}
}

gate_findings contains f if {
	amount >= limits.gate_at
	amount < limits.director_at
	f := {
		"code": "value", "risk": "high",
		"reason": sprintf("%v %s is at or above %v %s and needs approval", [amount, currency, limits.gate_at, currency]),
	}
}

gate_findings contains f if {
	irreversible
	not tool.value # tools with a value are judged by their amount instead
	not learned
	f := {
		"code": "irreversible", "risk": object.get(tool, "risk", "high"),
		"reason": sprintf("%s %s cannot be undone", [input.action.tool, input.request.method]),
	}
}

gate_findings contains f if {
	tool.novelty == "gate"
	input.history.seen == 0
	not learned
	f := {
		"code": "novel", "risk": "medium",
		"reason": sprintf("first time %s calls %s with arguments of this shape", [input.agent.id, input.action.tool]),
	}
}

# Informational reasons on an allow.
notes contains r if {
	learned
	r := sprintf("auto-approved: humans approved this action class %v times without objection (learned)", [learned.approved])
}

notes contains r if {
	tool
	input.history.seen == 0
	r := sprintf("first time %s calls %s with arguments of this shape", [input.agent.id, input.action.tool])
}

# A catalogued, reversible tool with no value or novelty rule: the common case,
# decided by a few lookups without building any findings.
plain if {
	tool
	not tool.value
	not tool.irreversible
	not tool.novelty
	not data.latch_settings.irreversible_methods[input.request.method]
}

# ---- the decision -----------------------------------------------------------------
max_risk(findings) := data.latch_settings.risk_names[max({data.latch_settings.risk_rank[f.risk] | some f in findings})]

first_code(findings) := sort({f.code | some f in findings})[0]

reasons_of(findings) := sort({f.reason | some f in findings})

# The first branch is the hot path (a familiar call of a plain tool), written
# out in full rather than through `plain`: each rule call costs on the VM.
# Keep `tool` as the first condition: regorus 0.14.1's VM treats `not x.f` as
# true when x is undefined, which the case tables (VM vs interpreter) catch.
decision := {
	"action": "allow",
	"risk": "low",
	"code": "allowed",
	"reasons": [],
	"value": null,
} if {
	input.history.seen > 0
	tool
	not tool.value
	not tool.irreversible
	not tool.novelty
	not data.latch_settings.irreversible_methods[input.request.method]
} else := {
	"action": "allow",
	"risk": "low",
	"code": "allowed",
	"reasons": sort(notes),
	"value": null,
} if {
	plain
} else := {
	"action": "deny",
	"risk": max_risk(deny_findings),
	"code": first_code(deny_findings),
	"reasons": reasons_of(deny_findings),
	"value": value_info,
} if {
	count(deny_findings) > 0
} else := {
	"action": "gate",
	"risk": max_risk(gate_findings),
	"code": first_code(gate_findings),
	"reasons": reasons_of(gate_findings),
	"approval": data.latch_settings.approvals[max_risk(gate_findings)],
	"value": value_info,
} if {
	count(gate_findings) > 0
} else := {
	"action": "allow",
	"risk": "low",
	"code": "allowed",
	"reasons": sort(notes),
	"value": value_info,
}
