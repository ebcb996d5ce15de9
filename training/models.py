"""TrainingRun and Checkpoint arrive with the training issue; the app is registered now."""
