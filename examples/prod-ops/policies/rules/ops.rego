# Production operations: deploys and deletes outside business hours wait
# for on-call; protected resources are never deleted by an agent. Business
# hours and protected resources live in data.json (data.ops); the time
# comes from input.now (UTC).
package latch.rules.ops

import rego.v1

in_business_hours if {
	data.ops.business_days[input.now.weekday]
	input.now.hour >= data.ops.start_hour
	input.now.hour < data.ops.end_hour
}

sensitive if input.action.tool == "deploy"

sensitive if input.request.method == "DELETE"

# The resource named by the path after the route prefix, e.g. /ops/resources/db-main.
resource := trim_prefix(input.request.path, "/ops/resources/")

deny contains f if {
	sensitive
	input.request.method == "DELETE"
	data.ops.protected[resource]
	f := data.latch.lib.finding("protected_resource", "critical", sprintf("%s is protected and cannot be deleted by an agent", [resource]))
}

gate contains f if {
	sensitive
	not in_business_hours
	f := data.latch.lib.finding("after_hours", "high", sprintf("%s outside business hours (%s %02d:00 UTC) needs on-call approval", [input.action.tool, input.now.weekday, input.now.hour]))
}

notes contains "inside business hours" if {
	sensitive
	in_business_hours
}

quiet if not sensitive
