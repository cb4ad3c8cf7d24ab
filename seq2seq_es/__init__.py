"""seq2seq-es: distributed fine-tuning of Spanish sequence-to-sequence models."""

__version__ = "0.1.0"
