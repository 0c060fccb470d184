"""artmed: backdoor attacks and defenses for medical vision-language models, on top of ART."""

__version__ = "0.1.0"
