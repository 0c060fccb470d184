"""MedCLIP models: vision and text encoders, presets and checkpoint loading."""
