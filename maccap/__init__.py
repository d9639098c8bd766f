"""maccap-bench: reproducible text-only zero-shot captioning (MacCap and baselines)."""

__version__ = "0.1.0"
