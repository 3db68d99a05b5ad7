"""The state service: folds probe results into statuses and emits transitions."""
