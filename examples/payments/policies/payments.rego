# Payments: thresholds per currency live in data.json (data.payments).
package latch

import rego.v1

currency := upper(c) if {
	c := object.get(input.action.args, "currency", data.payments.default_currency)
	is_string(c)
}

limits := data.payments.limits[currency]

amount := input.action.args.amount if {
	is_number(input.action.args.amount)
	input.action.args.amount > 0
}

default decision := {
	"action": "deny", "risk": "high", "code": "malformed_payment",
	"reasons": ["a payment needs a positive numeric amount and a currency with configured limits"],
}

decision := {"action": "allow", "risk": "low", "code": "small_payment", "reasons": []} if {
	amount < limits.auto_below
}

decision := {
	"action": "gate", "risk": "high", "code": "payment_needs_lead",
	"reasons": [sprintf("%v %s is at or above the %v automatic limit", [amount, currency, limits.auto_below])],
	"value": {"amount": amount, "currency": currency},
	"approval": {"require": [{"role": "lead", "count": 1}], "timeout_s": 3600, "on_timeout": "deny"},
} if {
	amount >= limits.auto_below
	amount < limits.director_at
}

decision := {
	"action": "gate", "risk": "critical", "code": "payment_needs_director",
	"reasons": [sprintf("%v %s is at or above %v: a lead and a director must both approve", [amount, currency, limits.director_at])],
	"value": {"amount": amount, "currency": currency},
	"approval": {"require": [{"role": "lead", "count": 1}, {"role": "director", "count": 1}], "timeout_s": 7200, "on_timeout": "deny"},
} if {
	amount >= limits.director_at
	amount < limits.deny_at
}

decision := {
	"action": "deny", "risk": "critical", "code": "payment_over_limit",
	"reasons": [sprintf("%v is at or above the hard limit %v; use the treasury process", [amount, limits.deny_at])],
} if {
	amount >= limits.deny_at
}
