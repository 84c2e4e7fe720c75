# Novelty: the first call of an action class (agent, tool, method, argument
# shape) is held where the catalog says `novelty = "gate"`, and noted elsewhere.
package latch.rules.novelty

import data.latch.lib
import rego.v1

first_time := sprintf("first time %s calls %s with arguments of this shape", [input.agent.id, input.action.tool])

gate contains f if {
	lib.tool.novelty == "gate"
	input.history.seen == 0
	not lib.learned
	f := data.latch.lib.finding("novel", "medium", first_time)
}

notes contains first_time if {
	lib.tool
	input.history.seen == 0
}

notes contains r if {
	lib.learned
	r := sprintf("auto-approved: humans approved this action class %v times without objection (learned)", [lib.learned.approved])
}

quiet if {
	input.history.seen > 0
	not data.latch_learned.auto_approve[input.action.class]
}
