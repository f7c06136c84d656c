"""Tools an agent can call: the defaults (bash, files), custom tools, MCP tools, delegate."""
