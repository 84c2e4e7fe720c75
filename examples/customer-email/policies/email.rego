# Customer e-mail: internal domains and limits live in data.json (data.email).
package latch

import rego.v1

recipients := [input.action.args.to] if is_string(input.action.args.to)

recipients := input.action.args.to if is_array(input.action.args.to)

domain(address) := lower(parts[count(parts) - 1]) if parts := split(address, "@")

internal if {
	count(recipients) > 0
	every r in recipients {
		data.email.internal_domains[domain(r)]
	}
}

default decision := {
	"action": "deny", "risk": "medium", "code": "no_recipient",
	"reasons": ["`to` must be an address or a list of addresses"],
}

decision := {
	"action": "deny", "risk": "high", "code": "bulk_mail",
	"reasons": [sprintf("%d recipients is over the limit of %d; use the campaign tool", [count(recipients), data.email.max_recipients])],
} if {
	count(recipients) > data.email.max_recipients
} else := {"action": "allow", "risk": "low", "code": "internal", "reasons": []} if {
	internal
} else := {
	"action": "gate", "risk": "medium", "code": "first_contact",
	"reasons": [sprintf("%s has never e-mailed %s before", [input.agent.id, concat(", ", recipients)])],
	"approval": {"require": [{"role": "support-lead", "count": 1}], "timeout_s": 1800, "on_timeout": "deny"},
} if {
	count(recipients) > 0
	input.history.seen == 0
} else := {"action": "allow", "risk": "low", "code": "known_recipient", "reasons": []} if {
	count(recipients) > 0
}
