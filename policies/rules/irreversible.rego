# Irreversibility: tools marked irreversible in the catalog, and methods in
# data.latch_settings.irreversible_methods, are held for a human — unless the
# tool is judged by its value instead, or the class was learned as safe.
package latch.rules.irreversible

import data.latch.lib
import rego.v1

irreversible if lib.tool.irreversible

irreversible if data.latch_settings.irreversible_methods[input.request.method]

# An MCP server's own `destructiveHint` (input.mcp.annotations): an
# untrusted hint, so it can add irreversibility but never take it away.
irreversible if input.mcp.annotations.destructiveHint == true

gate contains f if {
	irreversible
	not lib.tool.value
	not lib.learned
	f := data.latch.lib.finding("irreversible", object.get(lib.tool, "risk", "high"), sprintf("%s %s cannot be undone", [input.action.tool, input.request.method]))
}

quiet if {
	not data.latch_settings.tools[input.action.tool].irreversible
	not data.latch_settings.irreversible_methods[input.request.method]
	not input.mcp.annotations.destructiveHint
}
