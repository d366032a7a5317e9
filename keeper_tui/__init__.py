"""rbee-keeper: the CLI and the Textual TUI users drive the queen with."""
