# Prompt promotions: moving a protected label (`production`) is a call to
# this policy with action.tool = "latch.prompt.promote". A version whose
# checks or evaluations fail is not promoted; the roll-back roles may put the
# previously live version back at once (audited); anything else waits for
# the label's quorum in data.latch_settings.prompts.approvals (the Latch gate
# never counts the version's author).
package latch.prompts

import rego.v1

settings := data.latch_settings.prompts

args := input.action.args

approval := object.get(settings.approvals, args.label, settings.approvals["*"])

may_roll_back if {
	some role in input.agent.roles
	role in settings.rollback_roles
}

decision := {
	"action": "deny",
	"risk": "high",
	"code": "prompt_checks_failed",
	"reasons": [sprintf("version %d of %s fails %d check(s) or evaluation(s); fix them before it goes to %s", [args.to_version, args.name, args.checks.failed, args.label])],
} if {
	args.checks.failed > 0
	args.rollback == false
} else := {
	"action": "allow",
	"risk": "high",
	"code": "prompt_rollback",
	"reasons": [sprintf("%s rolls %s of %s back to version %d", [input.agent.id, args.label, args.name, args.to_version])],
} if {
	args.rollback == true
	may_roll_back
} else := {
	"action": "gate",
	"risk": "high",
	"code": "prompt_promotion",
	"reasons": [sprintf("%s of %s to version %d by %s (+%d/-%d lines)", [args.label, args.name, args.to_version, args.author, args.diff.added, args.diff.removed])],
	"approval": approval,
}
