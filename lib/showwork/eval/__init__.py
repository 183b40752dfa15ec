"""Evaluation: scoring shards, voting, the report and the training curves it reads."""
