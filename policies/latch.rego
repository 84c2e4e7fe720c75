# Latch's shipped gate policy: the decision, from the findings of every
# `latch.rules.<concern>` package (rules/: catalog, value, irreversibility,
# novelty). To add a concern, add a package under rules/ that contributes
# `deny`, `gate` or `notes` (see lib.rego); to tune one, change data.json
# (data.latch_settings), not the code.
package latch

import data.latch.lib
import rego.v1

# The concerns in force: packages `latch.rules.<name>` listed in
# data.latch_settings.concerns (a test checks none is left out).
concerns := data.latch_settings.concerns

deny_findings contains f if {
	some c in concerns
	data.latch.rules[c].deny[f]
}

gate_findings contains f if {
	some c in concerns
	data.latch.rules[c].gate[f]
}

notes contains n if {
	some c in concerns
	data.latch.rules[c].notes[n]
}

# The hot path: a familiar call on which every concern is `quiet` (it says
# so cheaply, and then contributes no finding and no note). A concern that
# defines no `quiet` is never quiet, so it is always evaluated in full.
#
# With the shipped concerns in force (the usual case) their `quiet`
# conditions are restated here in one body: on the VM each rule call costs
# about half a microsecond, and this is every allowed call's path (four
# calls: 5.3 µs; one body: 3.1 µs). The list of concerns is a literal, twice:
# a rule holding it would cost another call. latch_test.rego holds this body to the
# concerns' own `quiet` rules on a call that trips each condition, so a
# change to one of them that is not made here fails `latch policy test`.
# Any other list of concerns (a pack that adds its own) asks each listed
# concern by name.
quiet := true if {
	input.history.seen > 0
	data.latch_settings.concerns == ["catalog", "value", "irreversible", "novelty"]

	# catalog: a tool in the catalog, offered to every agent
	tool := data.latch_settings.tools[input.action.tool]
	tool # its own condition: the VM lets `not tool.x` through when `tool` is undefined
	not tool.visible_to

	# value: the tool is not judged by the value at stake
	not tool.value

	# irreversible: neither the tool, the method nor the MCP annotation is
	not tool.irreversible
	not data.latch_settings.irreversible_methods[input.request.method]
	not input.mcp.annotations.destructiveHint

	# novelty: seen before (above), and not a class learned as safe
	not data.latch_learned.auto_approve[input.action.class]
} else := false if {
	data.latch_settings.concerns == ["catalog", "value", "irreversible", "novelty"]
} else := true if {
	input.history.seen > 0
	not loud
}

loud if {
	some c in concerns
	not data.latch.rules[c].quiet
}

gate_risk := data.latch.lib.max_risk(gate_findings)

# MCP `tools/list` offers an agent only what it may use: tools in the
# catalog that are offered to it. (Hiding is a courtesy to the model; a
# call of a hidden tool is still judged, and refused, like any other.)
default tool_visible := false

tool_visible if {
	data.latch.lib.tool
	data.latch.lib.offered
}

default value := null

value := data.latch.rules.value.info

decision := data.latch.prompts.decision if {
	input.action.tool == "latch.prompt.promote"
} else := {
	"action": "allow",
	"risk": "low",
	"code": "allowed",
	"reasons": [],
	"value": null,
} if {
	quiet
} else := {
	"action": "deny",
	"risk": data.latch.lib.max_risk(deny_findings),
	"code": data.latch.lib.top_code(deny_findings),
	"reasons": data.latch.lib.reasons(deny_findings),
	"value": value,
} if {
	count(deny_findings) > 0
} else := {
	"action": "gate",
	"risk": gate_risk,
	"code": data.latch.lib.top_code(gate_findings),
	"reasons": data.latch.lib.reasons(gate_findings),
	"approval": data.latch_settings.approvals[gate_risk],
	"value": value,
} if {
	count(gate_findings) > 0
} else := {
	"action": "allow",
	"risk": "low",
	"code": "allowed",
	"reasons": sort(notes),
	"value": value,
}
