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

# The hot path names the shipped concerns' `quiet` rules one by one: a call
# is familiar only while each of them is quiet, and with another list of
# concerns each listed one is asked by name. (Packs run these tests on their
# own data, so the tests bring theirs.)
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

test_the_hot_path_hears_every_shipped_concern if {
	not quiet_with(shipped) with data.latch.rules.catalog.quiet as false
	not quiet_with(shipped) with data.latch.rules.value.quiet as false
	not quiet_with(shipped) with data.latch.rules.irreversible.quiet as false
	not quiet_with(shipped) with data.latch.rules.novelty.quiet as false
}

test_another_list_of_concerns_is_asked_by_name if {
	quiet_with(["catalog", "novelty"])
	not quiet_with(["catalog", "novelty"]) with data.latch.rules.novelty.quiet as false
}
