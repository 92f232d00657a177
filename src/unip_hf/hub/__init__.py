"""The Hugging Face Hub: model and dataset cards, evaluation results, and what a model is saved with."""
