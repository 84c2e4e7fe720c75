# Catalog: a tool not in data.latch_settings.tools is refused.
package latch.rules.catalog

import data.latch.lib
import rego.v1

deny contains f if {
	not lib.tool
	f := data.latch.lib.finding("unknown_tool", "high", sprintf("tool %q is not in the catalog; an administrator must add it before agents can use it", [input.action.tool]))
}

quiet if data.latch_settings.tools[input.action.tool]
