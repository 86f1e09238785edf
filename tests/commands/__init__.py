"""End-to-end tests of commands/: one or more files per cog, driving the real bot through the sandbox."""
