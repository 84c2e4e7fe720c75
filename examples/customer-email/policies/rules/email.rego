# Customer e-mail: who may be written to without a human looking first.
# Internal domains and the recipient limit live in data.json (data.email).
package latch.rules.email

import rego.v1

sending if input.action.tool == "send_email"

recipients := [input.action.args.to] if is_string(input.action.args.to)

recipients := input.action.args.to if is_array(input.action.args.to)

domain(address) := lower(parts[count(parts) - 1]) if parts := split(address, "@")

internal if {
	count(recipients) > 0
	every r in recipients {
		data.email.internal_domains[domain(r)]
	}
}

deny contains f if {
	sending
	not recipients
	f := data.latch.lib.finding("no_recipient", "medium", "`to` must be an address or a list of addresses")
}

deny contains f if {
	sending
	count(recipients) == 0
	f := data.latch.lib.finding("no_recipient", "medium", "`to` must be an address or a list of addresses")
}

deny contains f if {
	sending
	count(recipients) > data.email.max_recipients
	f := data.latch.lib.finding("bulk_mail", "high", sprintf("%d recipients is over the limit of %d; use the campaign tool", [count(recipients), data.email.max_recipients]))
}

gate contains f if {
	sending
	count(recipients) > 0
	not internal
	input.history.seen == 0
	f := data.latch.lib.finding("first_contact", "medium", sprintf("%s has never e-mailed %s before", [input.agent.id, concat(", ", recipients)]))
}

notes contains "every recipient is internal" if {
	sending
	internal
}

quiet if not sending
