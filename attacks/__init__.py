"""Poisoning and backdoor attacks on MedCLIP (the seed paper's BadMatch and BadDist), as ART attacks."""
