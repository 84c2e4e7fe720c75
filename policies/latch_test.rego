# Run by `latch policy test`, by every reload, and in CI.
package latch_test

import rego.v1

# A package under latch.rules that data.latch_settings.concerns does not
# list would never be consulted: refuse such a policy set.
test_every_rules_package_is_a_concern if {
	every name, _ in data.latch.rules {
		name in data.latch_settings.concerns
	}
}

test_every_concern_has_a_package if {
	every name in data.latch_settings.concerns {
		data.latch.rules[name]
	}
}

# With the shipped concerns in force the hot path restates their `quiet`
# conditions in one body; with another list of concerns each listed one is
# asked by name. (Packs run these tests on their own data, so the tests
# bring theirs.)
familiar := {
	"action": {"tool": "search", "args": {}, "class": "c"},
	"request": {"method": "GET"},
	"agent": {"id": "bot", "roles": ["agent"]},
	"history": {"seen": 3},
}

shipped := ["catalog", "value", "irreversible", "novelty"]

quiet_with(concerns) if {
	data.latch.quiet with input as familiar
		with data.latch_settings.concerns as concerns
		with data.latch_settings.tools as {"search": {}}
}

test_a_familiar_call_takes_the_hot_path if {
	quiet_with(shipped)
}

test_another_list_of_concerns_is_asked_by_name if {
	quiet_with(["catalog", "novelty"])
	not quiet_with(["catalog", "novelty"]) with data.latch.rules.novelty.quiet as false
}

# A familiar call, and calls that each trip one of the hot path's conditions.
trips := {
	"unknown tool": {"action": {"tool": "unknown"}},
	"tool offered to some roles": {"action": {"tool": "admin_only"}},
	"tool judged by value": {"action": {"tool": "trade"}},
	"irreversible tool": {"action": {"tool": "drop"}},
	"irreversible method": {"request": {"method": "DELETE"}},
	"destructive MCP tool": {"mcp": {"annotations": {"destructiveHint": true}}},
	"class learned as safe": {"action": {"class": "learned"}},
	"first call": {"history": {"seen": 0}},
}

# What the hot path says about `call`, and what asking each shipped
# concern by name says, on the same data.
verdicts(call) := v if {
	v := [data.latch.quiet, concerns_quiet] with input as call
		with data.latch_settings.concerns as shipped
		with data.latch_settings.tools as {
			"search": {},
			"admin_only": {"visible_to": ["admin"]},
			"trade": {"value": {"amount_field": "amount"}},
			"drop": {"irreversible": true},
		}
		with data.latch_settings.irreversible_methods as {"DELETE": true}
		with data.latch_learned.auto_approve as {"learned": {"approved": 9}}
}

concerns_quiet := true if {
	input.history.seen > 0
	not data.latch.loud
} else := false

test_the_hot_path_agrees_with_every_shipped_concern if {
	verdicts(familiar) == [true, true]
	disagreements := {name |
		some name, trip in trips
		v := verdicts(object.union(familiar, trip))
		v[0] != v[1]
	}
	count(disagreements) == 0
	tripped := {name |
		some name, trip in trips
		verdicts(object.union(familiar, trip))[0] == false
	}
	count(tripped) == count(trips)
}
