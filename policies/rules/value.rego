# Value: the amount at stake against per-currency limits
# (data.latch_settings.value_limits); the catalog entry names the fields.
package latch.rules.value

import data.latch.lib
import rego.v1

spec := lib.tool.value

raw_amount := input.action.args[spec.amount_field]

amount := raw_amount if is_number(raw_amount)

amount := to_number(raw_amount) if {
	is_string(raw_amount)
	regex.match(`^[0-9]+(\.[0-9]+)?$`, raw_amount)
}

raw_currency := object.get(input.action.args, spec.currency_field, spec.default_currency)

currency := upper(raw_currency) if is_string(raw_currency)

limits := data.latch_settings.value_limits[currency]

# The value the decision reports.
info := {"amount": amount, "currency": currency}

deny contains f if {
	spec
	not amount
	f := data.latch.lib.finding("missing_amount", "high", sprintf("%s needs a numeric %q argument", [input.action.tool, spec.amount_field]))
}

deny contains f if {
	amount
	not limits
	f := data.latch.lib.finding("unknown_currency", "high", sprintf("no limits are configured for currency %s", [json.marshal(raw_currency)]))
}

deny contains f if {
	amount < 0
	f := data.latch.lib.finding("invalid_amount", "high", sprintf("%v is not a valid amount", [amount]))
}

deny contains f if {
	amount >= limits.deny_at
	f := data.latch.lib.finding("value_limit", "critical", sprintf("%v %s is at or above the hard limit of %v %s; split the work or ask a human to do it", [amount, currency, limits.deny_at, currency]))
}

gate contains f if {
	amount >= limits.director_at
	amount < limits.deny_at
	f := data.latch.lib.finding("value", "critical", sprintf("%v %s is at or above %v %s and needs a lead and a director", [amount, currency, limits.director_at, currency]))
}

gate contains f if {
	amount >= limits.gate_at
	amount < limits.director_at
	f := data.latch.lib.finding("value", "high", sprintf("%v %s is at or above %v %s and needs approval", [amount, currency, limits.gate_at, currency]))
}

# Cheap and on the hot path, so written against data directly.
quiet if not data.latch_settings.tools[input.action.tool].value
