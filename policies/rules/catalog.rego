# Catalog: a tool not in data.latch_settings.tools is refused.
package latch.rules.catalog

import data.latch.lib
import rego.v1

deny contains f if {
	not lib.tool
	f := data.latch.lib.finding("unknown_tool", "high", sprintf("tool %q is not in the catalog; an administrator must add it before agents can use it", [input.action.tool]))
}

# A tool with `visible_to` is for agents holding one of those roles only
# (and hidden from the others' MCP tools/list: data.latch.tool_visible).
deny contains f if {
	lib.tool
	not lib.offered
	f := data.latch.lib.finding("tool_not_offered", "high", sprintf("tool %q is not offered to %s", [input.action.tool, input.agent.id]))
}

# Quiet for catalog tools offered to everyone (tools with `visible_to` are
# rare: they are always judged in full).
quiet if {
	data.latch_settings.tools[input.action.tool]
	not data.latch_settings.tools[input.action.tool].visible_to
}
