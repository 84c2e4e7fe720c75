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
