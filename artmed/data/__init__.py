"""Data: phantom radiographs, generated reports, zero-shot tasks, real-data adapters, the report labeler."""
