"""Suite-wide rules: a missing tool fails a test unless it is marked optional, and opt-in tests
run only with --opt-in (both in the plugin support.tools)."""

pytest_plugins = ["support.tools"]
