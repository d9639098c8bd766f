"""Suites, runner, result store and CLI of maccap-bench."""
