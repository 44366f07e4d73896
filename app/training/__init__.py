"""Fine-tuning of the base text encoder (used for ESM training and the text benchmark).

``app.training.finetune`` holds the torch code: loading the packaged MiniLM, sentence
embeddings (mean pooling + L2 norm), and classifier fine-tuning / evaluation. torch and
transformers are imported lazily there, so importing this package is cheap.
"""
