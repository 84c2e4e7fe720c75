# Production operations: business hours and protected resources live in
# data.json (data.ops); the time comes from input.now (UTC).
package latch

import rego.v1

in_business_hours if {
	data.ops.business_days[input.now.weekday]
	input.now.hour >= data.ops.start_hour
	input.now.hour < data.ops.end_hour
}

deploy if input.action.tool == "deploy"

delete if input.request.method == "DELETE"

sensitive if deploy

sensitive if delete

# The resource named by the path after the route prefix, e.g. /ops/resources/db-main.
resource := trim_prefix(input.request.path, "/ops/resources/")

protected if {
	delete
	data.ops.protected[resource]
}

decision := {
	"action": "deny", "risk": "critical", "code": "protected_resource",
	"reasons": [sprintf("%s is protected and cannot be deleted by an agent", [resource])],
} if {
	protected
} else := {"action": "allow", "risk": "low", "code": "routine", "reasons": []} if {
	not sensitive
} else := {"action": "allow", "risk": "medium", "code": "business_hours", "reasons": ["inside business hours"]} if {
	in_business_hours
} else := {
	"action": "gate", "risk": "high", "code": "after_hours",
	"reasons": [sprintf("%s outside business hours (%s %02d:00 UTC) needs on-call approval", [input.action.tool, input.now.weekday, input.now.hour])],
	"approval": {
		"require": [{"role": "oncall", "count": 1}], "timeout_s": 900, "on_timeout": "escalate",
		"escalate": [{"require": [{"role": "incident-commander", "count": 1}], "timeout_s": 1800}],
	},
}
