"""Statistics, tables and figures over maccap features and results."""
