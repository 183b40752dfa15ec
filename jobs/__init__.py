"""Job entrypoints, one per pipeline stage: wiring only, logic lives in showwork."""
