"""Accuracy: proxy training, the lm-eval adapter and tasks, the recall task, tokenizer,
checkpoints and released-weight import, and the accuracy stage of a run."""
