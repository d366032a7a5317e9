"""The keeper's Textual interface (imported only when it opens, so the CLI stays fast)."""
